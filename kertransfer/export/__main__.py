"""`python -m kertransfer.export`: the export command, and the TF bridge.

`python -m kertransfer.export RUN_DIR [options]` is `kertransfer export`;
`--_call REQUEST RESPONSE` is the child side of `bridge.delegate`.
"""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_call"]:
        from kertransfer.export import export
        from kertransfer.export import onnx
        from kertransfer.export import saved_model
        from kertransfer.export import tflite
        from kertransfer.export import validate
        from kertransfer.export.bridge import serve_call

        functions = {"saved_model": saved_model, "tflite": tflite,
                     "onnx": onnx, "validate": validate, "export": export}
        return serve_call(argv[1], argv[2], functions)
    from kertransfer.cli import export_main

    return export_main(argv)


if __name__ == "__main__":
    sys.exit(main())
