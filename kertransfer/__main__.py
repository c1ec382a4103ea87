"""`python -m kertransfer ...`: the `kertransfer` command (e.g. under `torchrun -m kertransfer`)."""

import sys

from kertransfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
