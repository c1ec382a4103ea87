"""Where images and labels come from: class folders and label CSVs.

Every reader returns plain lists of file paths and numpy label arrays; no
pixels are read here. Layouts:

- fast.ai's (`from_paths`): `path/train/<class>/*` and `path/valid|val/<class>/*`;
- Keras's (`keras.utils.image_dataset_from_directory`): `path/<class>/*`,
  with a seeded `val_pct` held out for validation (`read_class_folders`);
- a label CSV (`from_csv`): `file_id,tags` rows, single- or multi-label.
"""

import os
import warnings

import numpy as np

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


def random_split(n, val_pct, seed):
    """`(train_idx, valid_idx)`: sorted indices, a seeded `val_pct` held out."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(val_pct * n)))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def subsample(labels, max_images, seed):
    """Sorted indices of at most `max_images` items, seeded, spread over the classes.

    Items are drawn in a seeded random order, class by class in turn (the
    first of each class, then the second of each, ...), so every class
    keeps `max_images // num_classes` items or all it has, and the rest go
    to the classes with more. All indices when there are no more than
    `max_images`.

    Args:
        labels: int class of each item `(n,)`.
        max_images: None (all), or the most items kept.
        seed: seed of the draw.

    Returns:
        int array of the kept indices, ascending.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if max_images is None or n <= max_images:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    rank = np.empty(n, dtype="int64")  # place of each item among its class, in `order`
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    position = np.empty(n, dtype="int64")
    position[order] = np.arange(n)
    return np.sort(np.lexsort((position, rank))[:max_images])


def test_paths(path, test_name):
    """Files of the unlabeled `path/<test_name>/` folder, or None."""
    if test_name is None:
        return None
    test_dir = os.path.join(path, test_name)
    if not os.path.isdir(test_dir):
        raise FileNotFoundError(f"Test folder not found: {test_dir}")
    return list_files(test_dir)[0]


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


def check_val_idxs(val_idxs, n, csv_path):
    """`(train_idx, valid_idx)` from user row indices, validated."""
    val = np.asarray(val_idxs).reshape(-1)
    if val.size and not np.issubdtype(val.dtype, np.integer):
        raise ValueError(
            f"val_idxs must be integer row indices of {csv_path} (0 = first "
            f"row after the header). Received dtype {val.dtype}."
        )
    val = np.unique(val.astype(np.int64))
    if val.size == 0 or val.size >= n:
        raise ValueError(
            f"val_idxs must hold between 1 and {n - 1} of the {n} rows of "
            f"{csv_path}, so both splits have images. Received {val.size}."
        )
    if val[0] < 0 or val[-1] >= n:
        raise ValueError(
            f"val_idxs must be row indices in [0, {n - 1}] for {csv_path}. "
            f"Received values from {val[0]} to {val[-1]}."
        )
    return np.setdiff1d(np.arange(n), val), val




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
