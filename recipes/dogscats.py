"""fast.ai lesson 1 (dogs vs cats) as a script, step by step.

    python recipes/dogscats.py [DATA_DIR] [--smoke]

DATA_DIR defaults to `untar_data("dogscats")`. `--smoke` runs at 64 px with
one epoch per stage on a sample of the data (the first 64 training and 32
validation photos of each class, linked into a temporary folder: the
lesson's `sample/` folder; whole batches of 32, so each compiled step sees
one batch shape), for a quick check.
"""

import argparse
import os
import tempfile

import numpy as np

from kertransfer import ConvLearner
from kertransfer import ImageClassifierData
from kertransfer import tfms_from_model
from kertransfer import untar_data


def sample_folder(path, out, n_train, n_valid):
    """Links the first photos of each class of `path` into `out`.

    Like the `sample/` folder of fast.ai's dogscats download: the same
    `train/<class>/`, `valid/<class>/` layout, `n_train` and `n_valid`
    photos per class (sorted by name), as symbolic links.

    Returns:
        `out`.
    """
    for split, n in (("train", n_train), ("valid", n_valid)):
        for c in sorted(os.listdir(os.path.join(path, split))):
            src = os.path.join(path, split, c)
            if not os.path.isdir(src):
                continue
            os.makedirs(os.path.join(out, split, c))
            for name in sorted(os.listdir(src))[:n]:
                os.symlink(os.path.abspath(os.path.join(src, name)), os.path.join(out, split, c, name))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", nargs="?", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    path = args.data_dir or untar_data("dogscats")
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="dogscats_sample_")  # removed at exit
        path = sample_folder(path, tmp.name, n_train=64, n_valid=32)
    arch, size = "efficientnet_lite0", 64 if args.smoke else 224
    data = ImageClassifierData.from_paths(path, batch_size=32, tfms=tfms_from_model(arch, size))
    learn = ConvLearner.pretrained(arch, data, precompute=True)
    learn.lr_find()
    lr = float(np.clip(learn.sched.suggestions().min_div10, 1e-4, 1e-2))
    learn.fit(lr, 1 if args.smoke else 2)
    learn.precompute = False
    learn.fit(lr, 1 if args.smoke else 3, cycle_len=1)
    learn.bn_freeze(True)
    learn.unfreeze()
    learn.fit(np.array([lr / 100, lr / 10, lr]), 1 if args.smoke else 3, cycle_len=1, cycle_mult=2)
    probs, y = learn.TTA()
    print(f"TTA accuracy: {(probs.argmax(1) == y).mean():.4f}")


if __name__ == "__main__":
    main()
