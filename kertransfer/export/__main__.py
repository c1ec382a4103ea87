"""`python -m kertransfer.export`: the export command, and the TF bridge.

`python -m kertransfer.export RUN_DIR [options]` is `kertransfer export`;
`--_call REQUEST RESPONSE` is the child side of `bridge._delegate`.
"""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_call"]:
        from kertransfer.export.bridge import _serve_call

        return _serve_call(argv[1], argv[2])
    from kertransfer.cli import export_main

    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())
