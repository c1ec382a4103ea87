"""fast.ai lesson 2 (Planet: Understanding the Amazon from Space) as a script.

    python recipes/planet.py --data PATH [--csv train_v2.csv] [--folder train-jpg]
    python recipes/planet.py --smoke

Multi-label satellite chips: `train_v2.csv` rows `image_name,tags` with
space-separated tags, images `PATH/train-jpg/<image_name>.jpg`. Top-down
augmentation (all 8 flips/rotations; the sky has no "up"), `max_zoom=1.05`,
progressive resizing 64 -> 128 -> 256 px with `learn.set_data(
data.resize(...))`, sigmoid head with binary cross-entropy, F2 (the Kaggle
metric) at the threshold `opt_th` finds on the validation set.

`--smoke` needs no Planet download: it builds a small multi-label set of
2x2 mosaics from the sample photos in `$KERTRANSFER_DATA` (hymenoptera and
dogscats; each mosaic is tagged with the classes it shows among ants, bees,
cats and dogs) and runs every step at small sizes (32 -> 64 px) with one epoch per stage.
"""

import argparse
import os
import random
import tempfile

import numpy as np
from PIL import Image

from kertransfer import ConvLearner
from kertransfer import ImageClassifierData
from kertransfer import fbeta
from kertransfer import opt_th
from kertransfer import tfms_from_model
from kertransfer import transforms_top_down
from kertransfer import untar_data
from kertransfer.images import Framing
from kertransfer.images import frame_image

ARCH = "efficientnet_lite0"


def _class_photos(folder):
    """`{class: [files]}` of a `folder/<class>/*` tree."""
    return {
        c: sorted(os.path.join(folder, c, f) for f in os.listdir(os.path.join(folder, c)))
        for c in sorted(os.listdir(folder))
    }


def _square(path, side):
    """A photo's short side resized to `side` pixels, center-cropped square."""
    return Image.fromarray(frame_image(path, Framing(side, crop_pct=1.0)))


def build_mosaics(photos, out_dir, n, cell=64, seed=0, prefix="mosaic"):
    """Writes `n` 2x2 mosaics of photos and returns their CSV rows.

    Each mosaic shows 1 to 3 distinct classes (each at least once) in
    random cells; its tags are those classes, sorted, space-separated.
    Photos Pillow cannot decode are left out.

    Args:
        photos: `{class_name: [image files]}`.
        out_dir: folder for `<prefix>_<i>.jpg`.
        n: number of mosaics.
        cell: side of one cell, pixels (the mosaic is `2 * cell`).
        seed: seed of the choice of classes, photos and cells.
        prefix: file name prefix (file ids are `<prefix>_<i>`).

    Returns:
        list of `(file_id, tags)` string pairs.
    """
    rng = random.Random(seed)
    os.makedirs(out_dir, exist_ok=True)
    classes = sorted(photos)
    cache, rows = {}, []
    for i in range(n):
        chosen = rng.sample(classes, rng.choice([1, 2, 2, 3]))
        cells = chosen + [rng.choice(chosen) for _ in range(4 - len(chosen))]
        rng.shuffle(cells)
        mosaic = Image.new("RGB", (2 * cell, 2 * cell))
        for k, c in enumerate(cells):
            while True:
                path = rng.choice(photos[c])
                if path not in cache:
                    try:
                        cache[path] = _square(path, cell)
                    except OSError:
                        cache[path] = None
                if cache[path] is not None:
                    break
            mosaic.paste(cache[path], ((k % 2) * cell, (k // 2) * cell))
        file_id = f"{prefix}_{i:04d}"
        mosaic.save(os.path.join(out_dir, file_id + ".jpg"), quality=90)
        rows.append((file_id, " ".join(sorted(chosen))))
    return rows


def sample_mosaic_set(out, n_train, n_valid, cell=64, seed=0, hymenoptera=None, dogscats=None):
    """A Planet-like folder from the sample photos: `out/train-jpg`, CSV.

    Training mosaics use the training photos, validation mosaics the
    validation photos (no photo is in both); the validation rows are last.

    Args:
        out: folder to write `train-jpg/` and `train_v2.csv` into.
        n_train, n_valid: number of training and validation mosaics.
        cell: side of one mosaic cell, pixels.
        seed: seed of the mosaics.
        hymenoptera, dogscats: the sample data folders (default:
            `untar_data`).

    Returns:
        `(csv_path, val_idxs)`.
    """
    hymenoptera = hymenoptera or untar_data("hymenoptera")
    dogscats = dogscats or untar_data("dogscats")
    train = {**_class_photos(os.path.join(hymenoptera, "train")),
             **_class_photos(os.path.join(dogscats, "train"))}
    valid = {**_class_photos(os.path.join(hymenoptera, "val")),
             **_class_photos(os.path.join(dogscats, "valid"))}
    folder = os.path.join(out, "train-jpg")
    rows = build_mosaics(train, folder, n_train, cell, seed, prefix="train")
    rows += build_mosaics(valid, folder, n_valid, cell, seed + 1, prefix="valid")
    csv_path = os.path.join(out, "train_v2.csv")
    with open(csv_path, "w") as f:
        f.write("image_name,tags\n")
        f.writelines(f"{name},{tags}\n" for name, tags in rows)
    return csv_path, np.arange(n_train, n_train + n_valid)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Planet folder (with train-jpg/ and the CSV)")
    parser.add_argument("--csv", default="train_v2.csv", help="label CSV, in --data or a path")
    parser.add_argument("--folder", default="train-jpg", help="image folder inside --data")
    parser.add_argument("--smoke", action="store_true", help="tiny run on sample photos")
    args = parser.parse_args()
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="planet_smoke_")  # removed at exit
        path = tmp.name
        csv, val_idxs = sample_mosaic_set(path, 64, 32, cell=48)
        folder, sizes, bs, epochs = "train-jpg", (32, 64), 32, 1
    elif args.data:
        path, csv, folder = args.data, args.csv, args.folder
        val_idxs, sizes, bs, epochs = None, (64, 128, 256), 64, 3
    else:
        parser.error("pass --data PATH (Kaggle Planet layout) or --smoke")

    def get_data(size):
        tfms = tfms_from_model(ARCH, size, aug_tfms=transforms_top_down, max_zoom=1.05)
        return ImageClassifierData.from_csv(
            path, folder, csv, val_idxs=val_idxs, suffix=".jpg", tfms=tfms, batch_size=bs,
            multi_label=True,  # Planet's tags are space-separated
        )

    data = get_data(sizes[0])
    print(f"{len(data.train_paths)} train / {len(data.valid_paths)} valid images, "
          f"{data.num_classes} tags: {data.classes}")
    learn = ConvLearner.pretrained(ARCH, data, precompute=False)
    learn.lr_find()
    lr = float(np.clip(learn.sched.suggestions().min_div10, 1e-3, 0.2))
    lrs = np.array([lr / 9, lr / 3, lr])
    for i, size in enumerate(sizes):
        if i:
            learn.set_data(data.resize(size))
            learn.freeze()
        learn.fit(lr, epochs, cycle_len=1, stage=f"head_{size}")
        learn.unfreeze()
        learn.fit(lrs, epochs, cycle_len=1, cycle_mult=2, stage=f"unfrozen_{size}")
    probs, y = learn.TTA()
    th = opt_th(probs, y)
    print(f"TTA F2: {fbeta(probs, y, threshold=0.5):.4f} at 0.5, "
          f"{fbeta(probs, y, threshold=th):.4f} at opt_th={th:.2f}")


if __name__ == "__main__":
    main()
