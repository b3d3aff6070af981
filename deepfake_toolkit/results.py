"""The one result schema: a result table's columns, its labels, its CSV and Parquet forms.

Every model reports ``fake_score`` = P(fake) in [0, 1]. A label is derived from the score either by
the five bands of the original system (mirrored onto fake_score) or by a single threshold.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from .models.registry import make_readable

COLUMNS: tuple[str, ...] = (
    "path",
    "model",
    "fake_score",
    "label",
    "region",
    "face_crop",
    "no_face_policy",
    "face_found",
    "n_faces",
    "face_box",
    "face_prob",
    "width",
    "height",
    "error",
)
"""Columns of every result table, in order:

- ``path``: the image file.
- ``model``: registry name of the model that scored it.
- ``fake_score``: P(fake) in [0, 1]; empty when the image was not scored.
- ``label``: verdict from the score (see :class:`Bands` and :class:`Threshold`), "no face" when
  skipped by the no-face policy, "error" when the file could not be read.
- ``region``: what was scored: "face", "image" (the whole image) or "" (nothing).
- ``face_crop``: whether face cropping was on for the run.
- ``no_face_policy``: what the run did with images without a face: "whole" or "skip"
  ("" when face cropping was off).
- ``face_found``: whether a face was detected (False when face cropping was off).
- ``n_faces``: faces detected above the probability threshold.
- ``face_box``: (x1, y1, x2, y2) in original-image pixels of the scored face, or None.
- ``face_prob``: detector probability of that face, or empty.
- ``width``, ``height``: image size after EXIF orientation.
- ``error``: why the file could not be read, or "".
"""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Cell starts that spreadsheet programs read as a formula; such text cells get a leading quote."""

PARQUET_SUFFIXES = (".parquet", ".pq")
"""File name endings written and read as Parquet; every other ending means CSV."""

_TEXT_COLUMNS = ("path", "model", "label", "region", "no_face_policy", "error")


@dataclass(frozen=True)
class Bands:
    """The original system's five labels, on fake_score.

    fake_score > 0.8 "likely fake", > 0.6 "weakly fake", > 0.4 "uncertain", > 0.2 "weakly real",
    else "likely real" (the original's bands on P(real) < 0.2, < 0.4, ... mirrored).
    """

    def __call__(self, fake_score: float) -> str:
        if fake_score > 0.8:
            return "likely fake"
        if fake_score > 0.6:
            return "weakly fake"
        if fake_score > 0.4:
            return "uncertain"
        if fake_score > 0.2:
            return "weakly real"
        return "likely real"

    def describe(self) -> str:
        return "bands"


@dataclass(frozen=True)
class Threshold:
    """Two labels: "fake" when fake_score >= ``value``, else "real"."""

    value: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.value}")

    def __call__(self, fake_score: float) -> str:
        return "fake" if fake_score >= self.value else "real"

    def describe(self) -> str:
        return f"threshold {self.value:g}"


LabelScheme = Bands | Threshold
FAKE_LABELS = frozenset({"fake", "likely fake", "weakly fake"})
"""Labels that count as a fake verdict in summaries."""


def label_scheme(threshold: float | None, model_threshold: float | None = None,
                 bands: bool = False) -> LabelScheme:
    """Choose the label scheme for a run.

    Args:
        threshold: A threshold the user asked for; wins over everything else.
        model_threshold: The model's operating threshold from its spec, used when the user gave
            none.
        bands: Use the five bands even when the model has an operating threshold.
    """
    if threshold is not None:
        return Threshold(float(threshold))
    if model_threshold is not None and not bands:
        return Threshold(float(model_threshold))
    return Bands()


def empty_results() -> pd.DataFrame:
    """A result table with no rows and the schema's columns."""
    return pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Build a result table from row dicts, with the schema's columns and dtypes."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    if frame.empty:
        return empty_results()
    frame["fake_score"] = pd.to_numeric(frame["fake_score"], errors="coerce").astype("float64")
    frame["face_prob"] = pd.to_numeric(frame["face_prob"], errors="coerce").astype("float64")
    for column in ("n_faces", "width", "height"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("face_crop", "face_found"):
        frame[column] = frame[column].astype(bool)
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    return frame


def _is_text(column: pd.Series) -> bool:
    return column.dtype == object or pd.api.types.is_string_dtype(column.dtype)


def _neutralise(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _restore(text: str) -> str:
    if text.startswith("'") and text[1:].startswith(FORMULA_PREFIXES):
        return text[1:]
    return text


def _box_to_text(box: Any) -> str:
    if box is None or (isinstance(box, float) and math.isnan(box)):
        return ""
    return json.dumps([round(float(v), 1) for v in box])


def _box_to_list(box: Any) -> list[float] | None:
    if box is None or (isinstance(box, float) and math.isnan(box)):
        return None
    return [round(float(v), 1) for v in box]


def _box_from_arrow(box: Any) -> tuple[float, ...] | None:
    if box is None or (pd.api.types.is_scalar(box) and pd.isna(box)):
        return None
    return tuple(float(v) for v in box)


def _box_from_text(text: Any) -> tuple[float, ...] | None:
    if not isinstance(text, str) or not text.strip():
        return None
    return tuple(float(v) for v in json.loads(text))


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a result table to CSV atomically, with formula-like text cells neutralised.

    The file is written to a temporary name in the target folder and renamed into place, so a
    reader never sees half a file. Text cells that a spreadsheet would run as a formula (starting
    with =, +, -, @, tab or carriage return) get a leading apostrophe; :func:`read_csv` removes it.

    Returns:
        The path written.
    """
    out = frame.copy()
    for column in out.columns:
        if column == "face_box":
            out[column] = out[column].map(_box_to_text)
        elif _is_text(out[column]):
            out[column] = out[column].map(lambda v: _neutralise(v) if isinstance(v, str) else v)

    def write(temporary: str) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as stream:
            out.to_csv(stream, index=False)

    return _write_atomically(path, write)


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a result table to Parquet atomically (needs pyarrow).

    Columns keep their types (``face_box`` becomes a list of floats, missing integers stay
    missing); :func:`read_parquet` gives back the table :func:`read_csv` gives for the same rows.
    Text is stored as it is: Parquet is not opened by spreadsheets as formulas.

    Returns:
        The path written.

    Raises:
        ImportError: pyarrow is not installed (the message says how to install it).
    """
    _require_pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = frame.copy()
    if "face_box" in out:
        out["face_box"] = out["face_box"].map(_box_to_list).astype(object)
    table = pa.Table.from_pandas(out, preserve_index=False)
    # The schema's own types, also for columns that happen to be all empty in this table.
    known = arrow_schema()
    table = table.cast(pa.schema([known.field(f.name) if f.name in known.names else f
                                  for f in table.schema]))
    return _write_atomically(path, lambda temporary: pq.write_table(table, temporary))


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a result table as Parquet when ``path`` ends in .parquet or .pq, else as CSV."""
    if is_parquet_path(path):
        return write_parquet(frame, path)
    return write_csv(frame, path)


def is_parquet_path(path: str | os.PathLike[str]) -> bool:
    """Whether a table at ``path`` is written and read as Parquet (see :data:`PARQUET_SUFFIXES`)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("Parquet files need pyarrow: pip install pyarrow (or "
                          "pip install \"deepfake-toolkit[ray]\"), or write a .csv") from None


def _write_atomically(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Run ``write(temporary)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        make_readable(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_csv(path: str | os.PathLike[str], text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a result CSV written by :func:`write_csv` back into a result table.

    Args:
        path: The CSV file.
        text_columns: Columns beyond the schema's to read as text (so that "007" or "" stay as
            written instead of becoming numbers or missing values).
    """
    text = {c: str for c in (*_TEXT_COLUMNS, *text_columns)}
    frame = pd.read_csv(path, dtype=text, keep_default_na=False,
                        na_values={"fake_score": [""], "face_prob": [""], "n_faces": [""],
                                   "width": [""], "height": [""]})
    for column in frame.columns:
        if _is_text(frame[column]) and column != "face_box":
            frame[column] = frame[column].map(lambda v: _restore(v) if isinstance(v, str) else v)
    if "face_box" in frame:
        frame["face_box"] = frame["face_box"].map(_box_from_text).astype(object)
    for column in ("face_crop", "face_found"):
        if column in frame:
            frame[column] = frame[column].map(
                lambda v: str(v).strip().lower() == "true").astype(bool)
    for column in ("n_faces", "width", "height"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def read_parquet(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a result Parquet file written by :func:`write_parquet` back into a result table, with
    the types :func:`read_csv` gives."""
    _require_pyarrow()
    return restore_types(pd.read_parquet(path))


def restore_types(frame: pd.DataFrame) -> pd.DataFrame:
    """Give a table that went through Arrow (a Parquet file, a Ray dataset) the types of
    :func:`read_csv`: text without missing values, ``face_box`` as a tuple or None, nullable
    integers."""
    frame = frame.copy()
    for column in _TEXT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].fillna("").astype(str)
    if "face_box" in frame:
        frame["face_box"] = frame["face_box"].map(_box_from_arrow).astype(object)
    for column in ("face_crop", "face_found"):
        if column in frame:
            frame[column] = frame[column].astype(bool)
    for column in ("n_faces", "width", "height"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in ("fake_score", "face_prob"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def arrow_schema():
    """The schema's columns as a ``pyarrow.Schema`` (Parquet files and Ray datasets use it)."""
    import pyarrow as pa

    types = {"fake_score": pa.float64(), "face_prob": pa.float64(), "face_crop": pa.bool_(),
             "face_found": pa.bool_(), "n_faces": pa.int64(), "width": pa.int64(),
             "height": pa.int64(), "face_box": pa.list_(pa.float64())}
    return pa.schema([(column, types.get(column, pa.string())) for column in COLUMNS])


def read_table(path: str | os.PathLike[str], text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a result table from Parquet (.parquet, .pq) or CSV (anything else)."""
    if is_parquet_path(path):
        return read_parquet(path)
    return read_csv(path, text_columns)


def summary(frame: pd.DataFrame) -> dict[str, int]:
    """Counts for a closing line: files, scored, fakes (by label), no-face skips, errors."""
    return {
        "files": int(len(frame)),
        "scored": int(frame["fake_score"].notna().sum()),
        "fakes": int(frame["label"].isin(FAKE_LABELS).sum()),
        "no_face": int((frame["label"] == "no face").sum()),
        "errors": int((frame["error"] != "").sum()),
    }
