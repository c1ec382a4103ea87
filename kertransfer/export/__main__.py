"""`python -m kertransfer.export`: the export command, and the TF bridge."""

import sys

from kertransfer.export.saved_model import main

if __name__ == "__main__":
    sys.exit(main())
