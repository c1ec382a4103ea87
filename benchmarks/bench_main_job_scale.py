"""Peak memory of the main job's precompute and head stages on large data.

Builds a fast.ai-layout folder of `--images` symbolic links to the shared
dogscats photos (see `bench_data_scale.py`), then runs the first stages of
`kertransfer train` with EfficientNet-Lite0 at 224 px: load the data
(`cache="auto"`: streamed above 2 GB of decoded images), precompute the
body's activations (written batch by batch into a memory-mapped `.npy`),
`lr_find` on them and one head epoch. Prints seconds per stage and the
process's peak RSS (`resource.getrusage`), which should stay under 4 GB
whatever the number of images.

Usage:

    python benchmarks/bench_main_job_scale.py --images 24000
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_data_scale import DEFAULT_DATA  # noqa: E402
from bench_data_scale import build_folder  # noqa: E402


def peak_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=24000)
    parser.add_argument("--valid", type=int, default=1000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kertransfer-mainjob-") as tmp:
        os.environ.setdefault("KERAS_HOME", os.path.join(tmp, "keras"))
        folder = build_folder(args.data, os.path.join(tmp, "data"), args.images, args.valid)
        import keras

        from kertransfer import ConvLearner
        from kertransfer import ImageClassifierData
        from kertransfer import tfms_from_model

        rows, start = {}, time.perf_counter()

        def stage(name, fn):
            t = time.perf_counter()
            result = fn()
            rows[name] = {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": peak_mb()}
            print(name, rows[name], file=sys.stderr, flush=True)
            return result

        data = stage("load_data", lambda: ImageClassifierData.from_paths(
            folder, batch_size=32, tfms=tfms_from_model("efficientnet_lite0", 224)))
        learn = stage("build", lambda: ConvLearner.pretrained("efficientnet_lite0", data, precompute=True))
        stage("precompute", lambda: (learn._activations("train"), learn._activations("valid")))
        stage("lr_find", learn.lr_find)
        stage("head_epoch", lambda: learn.fit(1e-2, 1, verbose=0))
        print(json.dumps({"images": args.images, "valid": args.valid, "backend": keras.backend.backend(),
                          "store": data.store.kind or "streamed", "stages": rows,
                          "total_s": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
