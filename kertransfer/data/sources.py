"""Where images and labels come from: class folders and label CSVs.

Every reader returns plain lists of file paths and numpy label arrays; no
pixels are read here. `read_folders` and `read_csv` list a whole data set
as a `Listing` (classes, each split's paths and labels, files skipped).
Layouts:

- fast.ai's (`from_paths`): `path/train/<class>/*` and `path/valid|val/<class>/*`;
- Keras's (`keras.utils.image_dataset_from_directory`): `path/<class>/*`,
  with a seeded `val_pct` held out for validation (`read_folders`);
- a label CSV (`from_csv`): `file_id,tags` rows, single- or multi-label
  (`read_csv`).

The index arithmetic of the splits (`random_split`, `subsample`,
`check_val_idxs`) lives in `kertransfer.data.splits`.
"""

import os
import warnings
from typing import NamedTuple

import numpy as np

from kertransfer.data.splits import check_val_idxs
from kertransfer.data.splits import random_split
from kertransfer.data.splits import subsample
from kertransfer.images import is_image_name


def list_files(folder):
    """`(files, skipped)` of a class folder, both sorted.

    `files` are the regular files (symbolic links followed); hidden entries
    (a leading `.`) are ignored. `skipped` is `[(path, reason)]` for what
    cannot be used and must not vanish silently: broken symbolic links and
    sub-folders (their files are not searched).
    """
    files, skipped = [], []
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            files.append(path)
        elif os.path.islink(path) and not os.path.exists(path):
            skipped.append((path, f"broken symbolic link (to {os.readlink(path)!r})"))
        elif os.path.isdir(path):
            skipped.append((path, "a folder inside a class folder: its files are not used"))
        else:
            skipped.append((path, "not a regular file"))
    return files, skipped


def class_folders(split_dir):
    return sorted(
        d
        for d in os.listdir(split_dir)
        if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
    )


def is_keras_layout(path):
    """True when `path` holds class folders of images directly (Keras's layout).

    Keras's `image_dataset_from_directory` layout is `path/<class>/*` with no
    `train/` folder; a folder counts when at least one of its sub-folders
    holds an image file (`IMAGE_EXTENSIONS`).
    """
    for name in class_folders(path):
        folder = os.path.join(path, name)
        if any(is_image_name(f) for f in os.listdir(folder)):
            return True
    return False


def read_split(split_dir, classes=None):
    """Returns `(paths, labels, classes, skipped)` of a `split/<class>/*` folder.

    `skipped` lists `[(path, reason)]` entries of the class folders that are
    not files (`list_files`).
    """
    found = class_folders(split_dir)
    if not found:
        raise ValueError(
            f"No class folders in {split_dir}. Expected one sub-folder per "
            f"class, e.g. {os.path.join(split_dir, 'cats')}/*.jpg."
        )
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise ValueError(
                f"{split_dir} has class folder(s) {unknown} that the training "
                f"folder does not have (training classes: {classes}). Rename "
                "or remove them, or add training images for them."
            )
    paths, labels, skipped = [], [], []
    for c in found:
        files, bad = list_files(os.path.join(split_dir, c))
        skipped += bad
        if not files:
            raise ValueError(
                f"Class folder {os.path.join(split_dir, c)} is empty"
                + (f" (nothing usable: {bad[:3]})" if bad else "")
                + ". Add images to it or remove it."
            )
        paths += files
        labels += [classes.index(c)] * len(files)
    return paths, np.asarray(labels, dtype="int32"), classes, skipped


def test_paths(path, test_name):
    """Files of the unlabeled `path/<test_name>/` folder, or None."""
    if test_name is None:
        return None
    test_dir = os.path.join(path, test_name)
    if not os.path.isdir(test_dir):
        raise FileNotFoundError(f"Test folder not found: {test_dir}")
    return list_files(test_dir)[0]


class Listing(NamedTuple):
    """A data set as listed by `read_folders` or `read_csv` (no pixels read).

    Attributes:
        path: the data folder (`os.fspath`).
        classes: sorted class names; label `i` is `classes[i]`.
        splits: `{"train": (paths, labels), "valid": (paths, labels),
            "test": (paths, None) or None}`; labels are int32 `(n,)` or
            multi-hot float32 `(n, num_classes)`.
        skipped: `[(path, reason)]` of entries that are not files
            (`list_files`).
    """

    path: str
    classes: list
    splits: dict
    skipped: list


def check_two_classes(classes, source):
    """A classifier needs two classes; checked before any image is decoded.

    Raises:
        ValueError: naming `source` (the folder or CSV) and the classes found.
    """
    if len(classes) < 2:
        raise ValueError(
            f"{source} has {len(classes)} class(es) {classes}; a classifier needs at "
            "least 2. Add a folder (or CSV label) per class."
        )


def read_folders(path, trn_name="train", val_name=None, test_name=None, val_pct=0.2, seed=42, max_images=None):
    """Lists a folder of class folders, fast.ai's layout or Keras's.

    The listing behind `ImageClassifierData.from_paths`, whose docstring
    gives the layouts and arguments.

    Returns:
        `Listing`.

    Raises:
        FileNotFoundError, ValueError: as `ImageClassifierData.from_paths`.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Data folder not found: {path}")
    trn_dir = os.path.join(path, trn_name)
    keras_layout = not os.path.isdir(trn_dir) and val_name is None and is_keras_layout(path)
    if keras_layout:
        trn_dir = path
    elif not os.path.isdir(trn_dir):
        raise FileNotFoundError(
            f"No training folder {trn_dir} and no class folders of images in "
            f"{path}. Expected fast.ai's layout {path}/{trn_name}/<class>/*.jpg "
            f"(with {path}/valid/<class>/*.jpg; pass trn_name= for another "
            f"folder name) or Keras's layout {path}/<class>/*.jpg (val_pct of "
            "the images held out)."
        )
    trn_paths, trn_labels, classes, listed_skipped = read_split(trn_dir)
    if keras_layout:
        val_name = None
        if test_name is not None and test_name in classes:
            raise ValueError(
                f"{os.path.join(path, test_name)} would be both a class folder "
                "and the test folder; move the test images elsewhere."
            )
    elif val_name is None:
        val_name = next(
            (n for n in ("valid", "val") if os.path.isdir(os.path.join(path, n))),
            None,
        )
    elif not os.path.isdir(os.path.join(path, val_name)):
        raise FileNotFoundError(
            f"Validation folder not found: {os.path.join(path, val_name)}"
        )
    if val_name is not None:
        val_paths, val_labels, _, bad = read_split(os.path.join(path, val_name), classes)
        listed_skipped += bad
    else:
        if not 0 < val_pct < 1:
            raise ValueError(
                f"{path} has no valid/ or val/ folder, so val_pct of the "
                f"training images are held out; val_pct must be in (0, 1). "
                f"Received val_pct={val_pct}."
            )
        if len(trn_paths) < 2:
            raise ValueError(
                f"{trn_dir} has {len(trn_paths)} image(s); holding out val_pct for "
                "validation needs at least 2."
            )
        trn_idx, val_idx = random_split(len(trn_paths), val_pct, seed)
        val_paths = [trn_paths[i] for i in val_idx]
        val_labels = trn_labels[val_idx]
        trn_paths = [trn_paths[i] for i in trn_idx]
        trn_labels = trn_labels[trn_idx]
    test = test_paths(path, test_name)
    if max_images is not None:
        keep = subsample(trn_labels, max_images, seed)
        trn_paths, trn_labels = [trn_paths[i] for i in keep], trn_labels[keep]
        keep = subsample(val_labels, max_images, seed)
        val_paths, val_labels = [val_paths[i] for i in keep], val_labels[keep]
        if test is not None:
            test = [test[i] for i in subsample(np.zeros(len(test)), max_images, seed)]
    check_two_classes(classes, trn_dir)
    split_sources = {
        "train": (trn_paths, trn_labels),
        "valid": (val_paths, val_labels),
        "test": (test, None) if test is not None else None,
    }
    return Listing(path, classes, split_sources, listed_skipped)


def csv_row_names(rows, ids, limit=10):
    """`"row 3 (id 'x'), ..."` for error messages, at most `limit` rows."""
    names = [f"row {r} (id {ids[r]!r})" for r in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(names) + more


def read_label_csv(csv_path, skip_header, label_delim, multi_label=None):
    """Reads `file_id,tags` rows; returns `(ids, tags, header)`, tags as lists.

    Tags are split on `label_delim` (None, or `multi_label=False`: the
    whole cell is one label), blanks dropped, duplicates within a row
    removed. `header` is the first line's first cell when `skip_header`,
    else None. See `split_tags` for the ambiguities that raise.
    """
    import pandas as pd

    try:
        frame = pd.read_csv(
            csv_path,
            header=0 if skip_header else None,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(
            f"Could not read {csv_path} as CSV ({type(e).__name__}: {e}). "
            "Expected rows `file_id,tags`, e.g. `train_0,haze primary`."
        ) from e
    if frame.shape[1] < 2:
        raise ValueError(
            f"{csv_path} needs two columns, file id then label(s) (e.g. "
            f"`id,breed` or `image_name,tags`). Received columns "
            f"{list(frame.columns)}. If the file has no header row, pass "
            "skip_header=False."
        )
    ids = [s.strip() for s in frame.iloc[:, 0]]
    cells = [s.strip() for s in frame.iloc[:, 1]]
    tags = split_tags(cells, ids, csv_path, label_delim, multi_label)
    header = str(frame.columns[0]).strip() if skip_header else None
    no_id = [r for r, i in enumerate(ids) if not i]
    if no_id:
        raise ValueError(
            f"{csv_path}: empty file id in {csv_row_names(no_id, ids)} "
            "(rows counted from 0 after the header). Fill in or delete them."
        )
    empty = [r for r, row in enumerate(tags) if not row]
    if empty:
        raise ValueError(
            f"{csv_path}: no label in {csv_row_names(empty, ids)} (rows "
            "counted from 0 after the header). Every image needs at least one "
            "label; fill them in or delete those rows."
        )
    seen, dupes = set(), []
    for i in ids:
        if i in seen:
            dupes.append(i)
        seen.add(i)
    if dupes:
        warnings.warn(
            f"{csv_path} lists {len(dupes)} file id(s) more than once, e.g. "
            f"{dupes[:5]}; each row is used as a separate item.",
            stacklevel=3,
        )
    return ids, tags, header


# Characters that separate tags in other people's CSVs.
_OTHER_DELIMS = (",", ";", "|")


def split_tags(cells, ids, csv_path, label_delim, multi_label):
    """The label cells of a CSV as lists of tags, refusing ambiguous files.

    With `multi_label=False` (or `label_delim=None`) each cell is one label.
    Otherwise cells are split on `label_delim` (fast.ai's `label_delim`,
    default a space, as Kaggle Planet's `tags`). Two readings are refused
    rather than guessed, with the row and the argument to set:

    - a cell holding another common separator (`,` `;` `|`) that
      `label_delim` would leave inside one label (`'ant,insect'`);
    - with `multi_label=None` (infer) and the default space, a multi-word
      cell whose words never occur apart (`'carpenter ant'` in every row
      that has `carpenter`): one label with a space, or tags that always
      come together?

    Returns:
        list of lists of str, one per row.

    Raises:
        ValueError: on the ambiguities above.
    """
    if multi_label is False or label_delim is None:
        return [[c] if c else [] for c in cells]
    for other in _OTHER_DELIMS:
        if other == label_delim:
            continue
        rows = [r for r, c in enumerate(cells) if other in c]
        if rows:
            raise ValueError(
                f"{csv_path}: {csv_row_names(rows, ids)} hold {other!r} in the label "
                f"cell, e.g. {cells[rows[0]]!r} (rows counted from 0 after the header); "
                f"split on label_delim={label_delim!r} it would stay one label. Pass "
                f"label_delim={other!r} if it separates tags, or multi_label=False to "
                "keep each cell as one label."
            )
    tags = [
        list(dict.fromkeys(t.strip() for t in c.split(label_delim) if t.strip()))
        for c in cells
    ]
    if multi_label is None and label_delim == " " and any(len(row) > 1 for row in tags):
        rows_of, cells_of = {}, {}
        for r, row in enumerate(tags):
            for t in row:
                rows_of.setdefault(t, []).append(r)
                cells_of.setdefault(t, set()).add(tuple(row))
        for r, row in enumerate(tags):
            if len(row) < 2:
                continue
            bound = [t for t in row if len(rows_of[t]) >= 2 and len(cells_of[t]) == 1]
            if bound:
                raise ValueError(
                    f"{csv_path}: is {cells[r]!r} ({csv_row_names([r], ids)}) one label "
                    f"with a space, or the tags {row}? The word {bound[0]!r} never occurs "
                    f"apart from the others ({len(rows_of[bound[0]])} rows). Pass "
                    "multi_label=False for one label per cell, or multi_label=True to "
                    f"split cells on label_delim={label_delim!r}."
                )
    return tags


def read_csv(path, folder, csv_fname, val_idxs=None, suffix="", skip_header=True, test_name=None, val_pct=0.2, seed=42, label_delim=" ", multi_label=None):
    """Lists the images named in a CSV of labels, and their split.

    The listing behind `ImageClassifierData.from_csv`, whose docstring
    gives the CSV format and arguments (`label_delim` already resolved from
    fast.ai's `cat_separator`).

    Returns:
        `Listing` (nothing skipped: a listed file that is missing raises).

    Raises:
        FileNotFoundError, ValueError: as `ImageClassifierData.from_csv`.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Data folder not found: {path}")
    csv_path = os.fspath(csv_fname)
    if not os.path.isfile(csv_path) and os.path.isfile(os.path.join(path, csv_path)):
        csv_path = os.path.join(path, csv_path)
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"Label CSV not found: {csv_fname} (also looked in {path}). "
            "Pass its path, or its file name inside the data folder."
        )
    img_dir = os.path.join(path, folder)
    if not os.path.isdir(img_dir):
        raise FileNotFoundError(
            f"Image folder not found: {img_dir} (folder={folder!r} is "
            f"relative to path={path!r})."
        )
    if multi_label not in (None, True, False):
        raise ValueError(f"multi_label must be None, True or False. Received {multi_label!r}.")
    ids, tags, header = read_label_csv(csv_path, skip_header, label_delim, multi_label)
    if header and os.path.isfile(os.path.join(img_dir, f"{header}{suffix}")):
        raise ValueError(
            f"The first line of {csv_path} names an image ({header}{suffix} is in "
            f"{img_dir}), so it is data, not a header; skip_header=True would drop it. "
            "Pass skip_header=False."
        )
    root = os.path.realpath(img_dir)
    outside = [
        r for r, i in enumerate(ids)
        if os.path.isabs(i)
        or os.path.commonpath([root, os.path.normpath(os.path.join(root, i))]) != root
    ]
    if outside:
        raise ValueError(
            f"{csv_path}: {csv_row_names(outside, ids)} name files outside "
            f"the image folder {img_dir} (absolute paths or '..'). File ids are "
            "names inside folder=; fix or delete those rows."
        )
    paths = [os.path.join(img_dir, f"{i}{suffix}") for i in ids]
    missing = [r for r, p in enumerate(paths) if not os.path.isfile(p)]
    if missing:
        listing = "\n".join(f"  {paths[r]}  (row {r})" for r in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images listed in "
            f"{csv_path} are missing from {img_dir}:\n{listing}{more}\n"
            f"Check folder= and suffix= (received suffix={suffix!r}), or "
            "delete those rows."
        )
    classes = sorted({t for row in tags for t in row})
    index = {c: i for i, c in enumerate(classes)}
    if multi_label or any(len(row) != 1 for row in tags):
        labels = np.zeros((len(ids), len(classes)), dtype="float32")
        for r, row in enumerate(tags):
            labels[r, [index[t] for t in row]] = 1.0
    else:
        labels = np.asarray([index[row[0]] for row in tags], dtype="int32")
    if val_idxs is not None:
        trn_idx, val_idx = check_val_idxs(val_idxs, len(paths), csv_path)
    elif not 0 < val_pct < 1 or len(paths) < 2:
        raise ValueError(
            f"Without val_idxs, val_pct of the {len(paths)} rows of "
            f"{csv_path} are held out for validation; val_pct must be in "
            f"(0, 1) and there must be 2+ rows. Received val_pct={val_pct}."
        )
    else:
        trn_idx, val_idx = random_split(len(paths), val_pct, seed)
    test = test_paths(path, test_name)
    check_two_classes(classes, csv_path)
    split_sources = {
        "train": ([paths[i] for i in trn_idx], labels[trn_idx]),
        "valid": ([paths[i] for i in val_idx], labels[val_idx]),
        "test": (test, None) if test is not None else None,
    }
    return Listing(path, classes, split_sources, [])
