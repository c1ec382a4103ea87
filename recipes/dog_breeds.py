"""fast.ai lesson 2 (Kaggle Dog Breed Identification) as a script.

    python recipes/dog_breeds.py --data PATH [--csv labels.csv] [--folder train]
    python recipes/dog_breeds.py --smoke

Kaggle layout: `PATH/labels.csv` with rows `id,breed`, images
`PATH/train/<id>.jpg`, optional unlabeled `PATH/test/`. A seeded 20 % of
the rows is held out (fast.ai `get_cv_idxs`). The head trains on
precomputed activations at 224 px, then with augmentation, then the data
switches to 299 px with `learn.set_data(data.resize(299))` (a fully
convolutional body takes any size; bigger images fight overfitting), and
test-time augmentation gives the final accuracy and log loss.

`--smoke` needs no Kaggle download: it writes a `labels.csv` for some of the
dogs-vs-cats sample photos in the Kaggle layout in a temporary folder and
runs every step at small sizes (64 -> 96 px), one epoch per stage.
"""

import argparse
import os
import shutil
import tempfile

import numpy as np

from kertransfer import ConvLearner
from kertransfer import ImageClassifierData
from kertransfer import tfms_from_model
from kertransfer import untar_data
from kertransfer.interpret import cross_entropy

ARCH = "efficientnet_lite0"


def sample_kaggle_layout(out, per_class=60, dogscats=None):
    """Copies dogs-vs-cats photos into the Kaggle dog-breeds layout.

    Writes `out/train/<id>.jpg` and `out/labels.csv` (`id,breed`, breed
    `cat` or `dog`) for `per_class` training photos of each class, and
    `out/test/` with 8 validation photos.

    Returns:
        the path of `labels.csv`.
    """
    dogscats = dogscats or untar_data("dogscats")
    os.makedirs(os.path.join(out, "train"), exist_ok=True)
    os.makedirs(os.path.join(out, "test"), exist_ok=True)
    rows = []
    for folder, breed in (("cats", "cat"), ("dogs", "dog")):
        src = os.path.join(dogscats, "train", folder)
        for name in sorted(os.listdir(src))[:per_class]:
            file_id = os.path.splitext(name)[0].replace(".", "_")
            shutil.copy(os.path.join(src, name), os.path.join(out, "train", file_id + ".jpg"))
            rows.append(f"{file_id},{breed}\n")
        src = os.path.join(dogscats, "valid", folder)
        for name in sorted(os.listdir(src))[:4]:
            shutil.copy(os.path.join(src, name), os.path.join(out, "test", name))
    csv_path = os.path.join(out, "labels.csv")
    with open(csv_path, "w") as f:
        f.write("id,breed\n")
        f.writelines(rows)
    return csv_path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Kaggle dog-breeds folder (labels.csv, train/, test/)")
    parser.add_argument("--csv", default="labels.csv", help="label CSV, in --data or a path")
    parser.add_argument("--folder", default="train", help="image folder inside --data")
    parser.add_argument("--smoke", action="store_true", help="tiny run on sample photos")
    args = parser.parse_args()
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="dog_breeds_smoke_")  # removed at exit
        path = tmp.name
        csv = sample_kaggle_layout(path)
        folder, sizes, bs, epochs = "train", (64, 96), 32, (1, 1, 1)
    elif args.data:
        path, csv, folder = args.data, args.csv, args.folder
        sizes, bs, epochs = (224, 299), 58, (2, 5, 3)
    else:
        parser.error("pass --data PATH (Kaggle dog-breeds layout) or --smoke")
    test_name = "test" if os.path.isdir(os.path.join(path, "test")) else None
    tfms = tfms_from_model(ARCH, sizes[0], max_zoom=1.1)
    data = ImageClassifierData.from_csv(
        path, folder, csv, suffix=".jpg", tfms=tfms, batch_size=bs, test_name=test_name
    )
    print(f"{len(data.train_paths)} train / {len(data.valid_paths)} valid images, "
          f"{data.num_classes} breeds")
    learn = ConvLearner.pretrained(ARCH, data, precompute=True, ps=0.5)
    learn.lr_find()
    lr = float(np.clip(learn.sched.suggestions().min_div10, 1e-3, 1e-2))
    learn.fit(lr, epochs[0], stage="head_precomputed")
    learn.precompute = False
    learn.fit(lr, epochs[1], cycle_len=1, stage="head_augmented")
    learn.set_data(data.resize(sizes[1]))
    learn.freeze()
    learn.fit(lr, epochs[2], cycle_len=1, cycle_mult=2, stage=f"head_{sizes[1]}")
    probs, y = learn.TTA()
    print(f"TTA at {sizes[1]} px: accuracy {(probs.argmax(1) == y).mean():.4f}, "
          f"log loss {cross_entropy(probs, y).mean():.4f}")
    if test_name:
        test_probs, _ = learn.TTA(split="test")
        print(f"Test predictions: {test_probs.shape} (one row per file in {test_name}/)")


if __name__ == "__main__":
    main()
