"""True labels of images: which images are real and which fake, and the subset each belongs to.

One rule set for everything that reads labels from a folder: evaluation (:func:`label_files`),
training (:func:`folder_label`) and the explorer (:func:`known_label`). A folder named ``real`` /
``0_real`` or ``fake`` / ``1_fake`` (any case, at any depth) labels the images below it; the
original system's file-name rule (:func:`prefix_label`) and a labels CSV
(:func:`labels_from_csv`) are the alternatives.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path, PurePath
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .images import find_images

__all__ = [
    "ALL_IMAGES", "FAKE", "REAL", "LabelError", "LabelsArg", "check_label_table", "folder_label",
    "known_label", "label_files", "labels_from_csv", "prefix_label", "subset_views",
    "with_known_labels",
]

REAL, FAKE = "real", "fake"
REAL_FOLDER_NAMES = frozenset({"real", "0_real"})
"""Folder names (any case) that mark the images below them as real."""
FAKE_FOLDER_NAMES = frozenset({"fake", "1_fake"})
"""Folder names (any case) that mark the images below them as fake."""
FAKE_FILE_PREFIX = "F"
"""The original system's rule: a file whose name starts with this (upper-case) letter is fake."""
ALL_IMAGES = "(all)"
"""Subset name of the rows that cover every image."""

LabelsArg = str | os.PathLike[str] | pd.DataFrame


class LabelError(ValueError):
    """The true labels could not be worked out; the message says what to fix."""


def _folder_class(name: str) -> str | None:
    lowered = name.lower()
    if lowered in REAL_FOLDER_NAMES:
        return REAL
    if lowered in FAKE_FOLDER_NAMES:
        return FAKE
    return None


def folder_label(relative_path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """True label and subset of a file from the folders in its path.

    A folder named real / 0_real or fake / 1_fake (any case, at any depth) gives the label; the
    other folders of the path, joined with "/", name the subset (``progan/cat/1_fake/x.png`` is
    fake in subset ``progan/cat``; ``fake/stylegan2/x.png`` is fake in subset ``stylegan2``).

    Args:
        relative_path: Path of the file relative to the evaluated folder.

    Returns:
        (label, subset); label is None when no folder in the path names a class.

    Raises:
        LabelError: The path holds both a real and a fake folder.
    """
    folders = PurePath(relative_path).parts[:-1]
    classes = {c for c in map(_folder_class, folders) if c}
    if len(classes) > 1:
        raise LabelError(f"{relative_path}: the path holds both a real and a fake folder, so its "
                         "label is ambiguous; rename one of them or use a labels CSV.")
    subset = "/".join(part for part in folders if _folder_class(part) is None)
    return (classes.pop() if classes else None), subset


def prefix_label(file_name: str) -> str:
    """The original system's rule: fake when the file name starts with "F", else real."""
    return FAKE if PurePath(file_name).name.startswith(FAKE_FILE_PREFIX) else REAL


def _parse_label(value: Any) -> str | None:
    text = str(value).strip().lower()
    if text in ("real", "0", "false", "0_real"):
        return REAL
    if text in ("fake", "1", "true", "1_fake"):
        return FAKE
    return None


def labels_from_csv(csv_path: str | os.PathLike[str], root: str | os.PathLike[str]) -> pd.DataFrame:
    """Read true labels from a CSV with columns ``path`` and ``label`` (and optionally ``subset``).

    Labels may be real/fake, 0/1 or false/true (fake = 1). Relative paths are taken relative to
    ``root``. Listed files that do not exist are left out with a warning.

    Args:
        csv_path: The labels CSV.
        root: Folder that relative paths in the CSV start from.

    Returns:
        A table with columns path, true_label, subset.

    Raises:
        LabelError: The CSV lacks a column, has labels it cannot read, or lists no existing file.
    """
    csv_path = Path(csv_path).expanduser()
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise LabelError(f"cannot read the labels CSV {csv_path}: {exc}") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise LabelError(f"the labels CSV {csv_path} needs the columns path and label (missing: "
                         f"{', '.join(sorted(missing))}); found: {', '.join(table.columns)}")
    labels = table["label"].map(_parse_label)
    unreadable = table.loc[labels.isna(), "label"].unique()
    if len(unreadable):
        raise LabelError(f"the labels CSV {csv_path} has labels that are neither real nor fake: "
                         f"{', '.join(map(repr, unreadable[:5]))}; use real/fake or 0/1.")
    root = Path(root).expanduser()
    paths = [p if p.is_absolute() else root / p for p in map(Path, table["path"])]
    out = pd.DataFrame({"path": [str(p) for p in paths], "true_label": labels,
                        "subset": table["subset"] if "subset" in table else ""})
    exists = np.array([p.is_file() for p in paths], dtype=bool)
    if not exists.all():
        examples = ", ".join(out.loc[~exists, "path"].head(3))
        warnings.warn(f"{int((~exists).sum())} files listed in {csv_path} were not found and are "
                      f"left out (e.g. {examples}).", stacklevel=2)
    out = out[exists]
    duplicated = out["path"].duplicated(keep="first")
    if duplicated.any():
        warnings.warn(f"{int(duplicated.sum())} files are listed twice in {csv_path}; the first "
                      "entry of each is used.", stacklevel=2)
        out = out[~duplicated]
    if out.empty:
        raise LabelError(f"none of the files listed in {csv_path} exists under {root}.")
    return out.reset_index(drop=True)


def label_files(root: str | os.PathLike[str], labels: LabelsArg = "folder",
                recursive: bool = True) -> pd.DataFrame:
    """Find the images under ``root`` and their true labels.

    Args:
        root: Folder of images.
        labels: "folder" (real / fake or 0_real / 1_fake folders at any depth, see
            :func:`folder_label`), "prefix" (the original system's rule, see
            :func:`prefix_label`; opt-in, as any file starting with "F" counts as fake), the path
            of a labels CSV (see :func:`labels_from_csv`), or a table with columns path and
            true_label (and optionally subset).
        recursive: Search sub-folders (folder and prefix rules).

    Returns:
        A table with columns path, true_label ("real"/"fake") and subset, one row per image.
        Images without a label are left out with a warning.

    Raises:
        LabelError: No image could be labelled, or a path is ambiguous.
        NotADirectoryError: ``root`` is not a folder.
    """
    root = Path(root).expanduser()
    if isinstance(labels, pd.DataFrame):
        return check_label_table(labels)
    if labels not in ("folder", "prefix"):
        if not Path(labels).expanduser().is_file():
            raise LabelError(f"--labels must be folder, prefix or a labels CSV file; {labels} is "
                             "none of these.")
        return labels_from_csv(labels, root)
    files = find_images(root, recursive=recursive)
    rows = []
    unlabelled = []
    for path in files:
        relative = path.relative_to(root)
        if labels == "prefix":
            parent = relative.parent.as_posix()
            rows.append((str(path), prefix_label(path.name), "" if parent == "." else parent))
            continue
        label, subset = folder_label(relative)
        if label is None:
            unlabelled.append(relative.as_posix())
        else:
            rows.append((str(path), label, subset))
    if unlabelled:
        warnings.warn(f"{len(unlabelled)} images under {root} are in no real/fake folder and are "
                      f"left out (e.g. {', '.join(unlabelled[:3])}).", stacklevel=2)
    if not rows:
        raise LabelError(f"no labelled images under {root}: put them in folders named real and "
                         "fake (or 0_real and 1_fake), or give a labels CSV.")
    return pd.DataFrame(rows, columns=["path", "true_label", "subset"])


def check_label_table(table: pd.DataFrame) -> pd.DataFrame:
    """A label table (path, true_label, subset) with its labels read as real/fake.

    Raises:
        LabelError: A column is missing or a label is neither real nor fake.
    """
    if not {"path", "true_label"} <= set(table.columns):
        raise LabelError("a label table needs the columns path and true_label")
    labels = table["true_label"].map(_parse_label)
    if labels.isna().any():
        raise LabelError("true_label must be real or fake (or 0/1) in every row")
    return pd.DataFrame({"path": table["path"].map(str), "true_label": labels,
                         "subset": table["subset"].fillna("").map(str)
                         if "subset" in table else ""}).reset_index(drop=True)


def known_label(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> str:
    """The label a real/fake folder on the way to ``path`` gives it, else "" (the explorer's
    rule: unlike :func:`folder_label` it never refuses a path, the nearest such folder wins).

    Args:
        path: An image file.
        root: Only folders below this one count (so a case folder that happens to be called
            "fake" does not label everything in it); None: every folder counts.

    Returns:
        "real", "fake", or "" when no folder names a label.
    """
    path = Path(path)
    folders = path.parent.parts
    if root is not None:
        try:
            folders = path.parent.relative_to(Path(root)).parts
        except ValueError:
            pass
    for folder in reversed(folders):
        label = _folder_class(folder)
        if label:
            return label
    return ""


def with_known_labels(table: pd.DataFrame,
                      root: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """A copy of a result table with a ``known_label`` column from the folder names (see
    :func:`known_label`)."""
    labelled = table.copy()
    labelled["known_label"] = [known_label(path, root) for path in labelled["path"]]
    return labelled


def subset_views(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame, bool]]:
    """The whole table, then each subset.

    A subset with images of one class only (e.g. ``fake/stylegan2``) is compared with all images
    of the other class; it is skipped when that would be the whole table again.

    Yields:
        (subset name, its rows, whether the other class was borrowed from the whole table).
    """
    yield ALL_IMAGES, table, False
    subsets = [s for s in table["subset"].unique() if s != ""] if "subset" in table else []
    if not subsets:
        return
    for subset in sorted(table["subset"].unique()):
        rows = table[table["subset"] == subset]
        classes = set(rows["true_label"])
        if len(classes) == 2:
            yield subset or "(top level)", rows, False
            continue
        other = table[~table["true_label"].isin(classes)]
        if len(rows) + len(other) == len(table):
            continue
        yield subset or "(top level)", pd.concat([rows, other]), True
