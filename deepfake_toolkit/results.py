"""The one result schema: a result table's columns, its labels, its CSV and Parquet forms.

Every model reports ``fake_score`` = P(fake) in [0, 1]. A label is derived from the score either by
the five bands of the original system (mirrored onto fake_score) or by a single threshold.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from .images import printable_path
from .files import make_readable
from .provenance import PROVENANCE_COLUMNS, PROVENANCE_TEXT_COLUMNS

STABILITY_COLUMNS: tuple[str, ...] = ("stability_spread", "stability_scores", "stability_reason")
"""Columns the stability check (``stability=True``) fills; see :mod:`deepfake_toolkit.stability`."""

COLUMN_TYPES: dict[str, str] = {
    "path": "text",
    "model": "text",
    "fake_score": "float",
    "label": "text",
    "label_rule": "text",
    "region": "text",
    "face_crop": "bool",
    "no_face_policy": "text",
    "face_found": "bool",
    "n_faces": "int",
    "face_box": "box",
    "face_prob": "float",
    "width": "int",
    "height": "int",
    "file_size": "int",
    "file_mtime": "float",
    "error": "text",
    **{column: "text" for column in PROVENANCE_TEXT_COLUMNS},
    "provenance_says_ai": "nullable_bool",
    "stability_spread": "float",
    "stability_scores": "text",
    "stability_reason": "text",
}
"""Every column of a result table and its kind, in order: the one table that building
(:func:`results_frame`), writing and reading (CSV, Parquet, Arrow) follow. Kinds: "text" (Python
strings, never missing), "float" (NaN when missing), "int" (nullable integers), "bool",
"nullable_bool" (True / False / missing) and "box" (a tuple of four floats or None)."""

COLUMNS: tuple[str, ...] = tuple(COLUMN_TYPES)
assert COLUMNS[-len(PROVENANCE_COLUMNS) - len(STABILITY_COLUMNS):-len(STABILITY_COLUMNS)] \
    == PROVENANCE_COLUMNS
"""Columns of every result table, in order:

- ``path``: the image file.
- ``model``: registry name of the model that scored it.
- ``fake_score``: P(fake) in [0, 1]; empty when the image was not scored.
- ``label``: verdict from the score (see :class:`Bands` and :class:`Threshold`), "no face" when
  skipped by the no-face policy, "error" when the file could not be read.
- ``label_rule``: the rule that gave the label: "threshold 0.5291 (model)" (the model's own
  operating threshold), "threshold 0.7 (user)" (a threshold the user chose) or "bands" (see
  :class:`deepfake_toolkit.scoring.Scoring`).
- ``region``: what was scored: "face", "image" (the whole image) or "" (nothing).
- ``face_crop``: whether face cropping was on for the run.
- ``no_face_policy``: what the run did with images without a face: "whole" or "skip"
  ("" when face cropping was off).
- ``face_found``: whether a face was detected (False when face cropping was off).
- ``n_faces``: faces detected above the probability threshold.
- ``face_box``: (x1, y1, x2, y2) in original-image pixels of the scored face, or None.
- ``face_prob``: detector probability of that face, or empty.
- ``width``, ``height``: image size after EXIF orientation.
- ``file_size``, ``file_mtime``: the file's size in bytes and modification time (seconds since
  1970-01-01 UTC, as ``os.stat`` gives it) when it was read; a resumed run (``resume=True``)
  skips a file only while both are unchanged. Empty when the file could not be examined.
- ``error``: why the file could not be read or scored, or "".
- Provenance (the same on every model's row of a file; empty when not checked), see
  :func:`deepfake_toolkit.provenance.read_provenance`: ``c2pa_status`` (none, valid, untrusted,
  invalid, remote, error, unavailable), ``c2pa_signer``, ``c2pa_claim_generator``,
  ``c2pa_source_type`` (IPTC digital source type, e.g. trainedAlgorithmicMedia),
  ``c2pa_actions``, ``c2pa_codes`` (validation failure codes), ``c2pa_remote_url``;
  ``xmp_source_type``, ``xmp_creator_tool``; ``exif_make``, ``exif_model``, ``exif_software``,
  ``exif_datetime``; ``generator``, ``generator_model``, ``generator_params`` (image-generator
  parameters); ``provenance_says_ai`` (True / False, missing when not checked). Several values in
  one cell are separated by "; ".
- Stability (filled by ``stability=True``): ``stability_spread`` (largest minus smallest score
  over the file as it is and its mild re-encodings), ``stability_scores`` (each re-encoding's
  score, "jpeg_q90=0.4123; ..."), ``stability_reason`` (why the label is "uncertain" when the
  verdict flips, else "").
"""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""Cell starts that spreadsheet programs read as a formula; such text cells get a leading quote
(so does a cell that starts with a quote, so that reading it back is exact)."""

ESCAPE_MARK = "%"
"""First character of a CSV text cell written in escaped form (see :func:`escape_cell`)."""

_UNSAFE_CHARACTER = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029\ud800-\udfff%]")
_ESCAPE = re.compile("%(u[0-9A-F]{4}|[0-9A-F]{2})")

PARQUET_SUFFIXES = (".parquet", ".pq")
"""File name endings written and read as Parquet; every other ending means CSV."""

TEXT_COLUMNS: tuple[str, ...] = tuple(c for c, kind in COLUMN_TYPES.items() if kind == "text")
"""The schema's text columns."""
FLOAT_COLUMNS: tuple[str, ...] = tuple(c for c, kind in COLUMN_TYPES.items() if kind == "float")
"""The schema's float columns (missing values are NaN)."""
_TEXT_COLUMNS = TEXT_COLUMNS
_FLOAT_COLUMNS = FLOAT_COLUMNS
INT_COLUMNS: tuple[str, ...] = tuple(c for c, kind in COLUMN_TYPES.items() if kind == "int")
"""The schema's integer columns (nullable: missing values are ``pd.NA``)."""
_INT_COLUMNS = INT_COLUMNS
_BOOL_COLUMNS = tuple(c for c, kind in COLUMN_TYPES.items() if kind == "bool")
_NULLABLE_BOOL_COLUMNS = tuple(c for c, kind in COLUMN_TYPES.items() if kind == "nullable_bool")


@dataclass(frozen=True)
class Bands:
    """The original system's five labels, on fake_score.

    fake_score > 0.8 "likely fake", > 0.6 "weakly fake", > 0.4 "uncertain", > 0.2 "weakly real",
    else "likely real" (the original's bands on P(real) < 0.2, < 0.4, ... mirrored); a score that
    is not a number (NaN) is an "error".
    """

    def __call__(self, fake_score: float) -> str:
        if not math.isfinite(fake_score):
            return "error"
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
    """Two labels: "fake" when fake_score >= ``value``, else "real"; "error" for NaN."""

    value: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.value}")

    def __call__(self, fake_score: float) -> str:
        if not math.isfinite(fake_score):
            return "error"
        return "fake" if fake_score >= self.value else "real"

    def describe(self) -> str:
        return f"threshold {self.value:g}"


LabelScheme = Bands | Threshold
FAKE_LABELS = frozenset({"fake", "likely fake", "weakly fake"})
"""Labels that count as a fake verdict in summaries."""


def empty_results() -> pd.DataFrame:
    """A result table with no rows and the schema's columns."""
    return pd.DataFrame({column: pd.Series(dtype=object) for column in COLUMNS})


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Build a result table from row dicts, with the schema's columns and dtypes.

    Text columns hold Python strings (dtype object), so that a path with bytes that are not
    UTF-8 (held by Python as surrogate escapes) stays the exact path of its file.
    """
    rows = list(rows)
    unknown = sorted(set().union(*rows) - set(COLUMNS)) if rows else []
    if unknown:
        raise ValueError(f"result rows hold columns the schema does not have: {unknown}")
    frame = pd.DataFrame({column: pd.Series([row.get(column) for row in rows], dtype=object)
                          for column in COLUMNS})
    if frame.empty:
        return empty_results()
    for column in _FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in _INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in _BOOL_COLUMNS:
        frame[column] = frame[column].astype(bool)
    for column in _TEXT_COLUMNS:
        # Short repeated texts ("none", a model name) are made one object each: rows from
        # decoding workers arrive with a copy per row (about 5 MB per 100,000 rows and column).
        keep = str if column in _UNIQUE_TEXT_COLUMNS else _shared_text
        frame[column] = text_series(["" if v is None or v is pd.NA or (isinstance(v, float)
                                                                     and math.isnan(v))
                                     else keep(str(v)) for v in frame[column]], frame.index)
    for column in _NULLABLE_BOOL_COLUMNS:
        frame[column] = frame[column].map(_nullable_bool).astype("boolean")
    return frame


class ResultColumns:
    """The rows of a run, gathered batch by batch into one preallocated array per column.

    A run knows how many rows it will make, so its columns are allocated once and each batch's
    rows are copied in and dropped. Keeping the batches as tables and concatenating them at the
    end held every row twice at that moment, plus pandas' bookkeeping per table (on 100,000
    rows: about 60 MB of tables and 27 MB of result, against the 27 MB of result alone).
    More rows than announced are taken too (the columns grow).

    The columns are allocated when the first rows arrive, not before: a run's first batch comes
    after its decoding workers have forked, so the workers share none of the pages the run then
    fills (a shared page that the main process writes is copied, and then held twice).

    Args:
        capacity: Rows expected.
        first: Rows that come before every appended row (a resumed run's kept rows), copied in
            when the columns are allocated.
    """

    def __init__(self, capacity: int, first: pd.DataFrame | None = None) -> None:
        self._n = 0
        self._capacity = max(int(capacity), 1)
        self._columns: dict[str, Any] | None = None
        self._first = first if first is not None and len(first) else None

    def __len__(self) -> int:
        return self._n + (len(self._first) if self._first is not None else 0)

    def _allocate(self) -> None:
        self._columns = {c: _empty_column(kind, self._capacity) for c, kind in COLUMN_TYPES.items()}
        first, self._first = self._first, None
        if first is not None:
            self.append(first)

    def append(self, frame: pd.DataFrame) -> None:
        """Copy in the rows of a result table (:func:`results_frame`'s schema)."""
        n = len(frame)
        if not n:
            return
        if self._columns is None:
            self._allocate()
        if self._n + n > self._capacity:
            self._grow(max(self._n + n, 2 * self._capacity))
        rows = slice(self._n, self._n + n)
        for column, kind in COLUMN_TYPES.items():
            values = frame[column]
            if kind in _MASKED_KINDS:
                data, mask = self._columns[column]
                missing = values.isna().to_numpy()
                mask[rows] = missing
                data[rows] = values.to_numpy(dtype=data.dtype, na_value=0)
            else:
                self._columns[column][rows] = values.to_numpy(dtype=_NUMPY_DTYPES[kind])
        self._n += n

    def table(self) -> pd.DataFrame:
        """Every row appended, in order, with :func:`results_frame`'s dtypes (no copy)."""
        if self._columns is None and self._first is not None:
            self._allocate()
        if not self._n:
            return empty_results()
        rows = slice(0, self._n)
        columns = {}
        for column, kind in COLUMN_TYPES.items():
            if kind == "int":
                data, mask = self._columns[column]
                columns[column] = pd.arrays.IntegerArray(data[rows], mask[rows])
            elif kind == "nullable_bool":
                data, mask = self._columns[column]
                columns[column] = pd.arrays.BooleanArray(data[rows], mask[rows])
            else:
                # dtype object stated: pandas would otherwise turn text into its own str type.
                columns[column] = pd.Series(self._columns[column][rows],
                                            dtype=_NUMPY_DTYPES[kind], copy=False)
        return pd.DataFrame(columns, copy=False)

    def _grow(self, capacity: int) -> None:
        for column, kind in COLUMN_TYPES.items():
            old, new = self._columns[column], _empty_column(kind, capacity)
            for target, source in zip(new if kind in _MASKED_KINDS else (new,),
                                      old if kind in _MASKED_KINDS else (old,)):
                target[:self._n] = source[:self._n]
            self._columns[column] = new
        self._capacity = capacity


_NUMPY_DTYPES = {"text": object, "box": object, "float": np.float64, "bool": np.bool_}
_MASKED_KINDS = {"int": np.int64, "nullable_bool": np.bool_}


def _empty_column(kind: str, capacity: int):
    if kind in _MASKED_KINDS:
        return np.zeros(capacity, dtype=_MASKED_KINDS[kind]), np.ones(capacity, dtype=bool)
    return np.empty(capacity, dtype=_NUMPY_DTYPES[kind])


_UNIQUE_TEXT_COLUMNS = frozenset({"path", "error", "stability_scores"})
"""Text columns whose cells are mostly different from row to row."""

_SHARED_TEXT_MAX = 64
"""Longer texts are kept as they are."""


def _shared_text(text: str) -> str:
    return sys.intern(text) if type(text) is str and len(text) <= _SHARED_TEXT_MAX else text


def text_series(values: Iterable[Any], index: pd.Index) -> pd.Series:
    """A column of Python strings (dtype object). pandas would otherwise store strings as Arrow
    text, which cannot hold file names with bytes that are not UTF-8."""
    return pd.Series(list(values), index=index, dtype=object)


def _nullable_bool(value: Any) -> bool | None:
    """True / False from a bool or its CSV text; None (missing) for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else ""
    return True if text == "true" else False if text == "false" else None


def _is_text(column: pd.Series) -> bool:
    return column.dtype == object or pd.api.types.is_string_dtype(column.dtype)


def escape_cell(text: str) -> str:
    r"""``text`` in a form that is safe in a CSV cell whatever it holds, and reversible.

    Text without control characters (line breaks, tabs, ...), undecodable bytes of file names
    (held by Python as surrogate escapes) or "%" is kept as it is. Otherwise the cell becomes
    "%" followed by the text with each of those characters written as %XX (the byte or control
    code in hex; "%" itself as %25), or %uXXXX for other surrogates and Unicode line separators.
    :func:`unescape_cell` gives back the exact text, so a path reads back as the same path.

    Example:
        >>> escape_cell("/photos/caf\udce9.jpg")
        '%/photos/caf%E9.jpg'
    """
    if not _UNSAFE_CHARACTER.search(text):
        return text
    return ESCAPE_MARK + _UNSAFE_CHARACTER.sub(_escape_character, text)


def _escape_character(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"%{code - 0xDC00:02X}"
    return f"%{code:02X}" if code < 0x80 else f"%u{code:04X}"


def unescape_cell(text: str) -> str:
    """The text :func:`escape_cell` was given."""
    if not text.startswith(ESCAPE_MARK):
        return text
    return _ESCAPE.sub(_unescape_character, text[len(ESCAPE_MARK):])


def _unescape_character(match: re.Match) -> str:
    code = match.group(1)
    if code.startswith("u"):
        return chr(int(code[1:], 16))
    value = int(code, 16)
    return chr(0xDC00 + value) if value >= 0x80 else chr(value)


def _neutralise(text: str) -> str:
    text = escape_cell(text)
    return "'" + text if text.startswith((*FORMULA_PREFIXES, "'")) else text


def _restore(text: str) -> str:
    if text.startswith("'"):
        return text[1:]
    return unescape_cell(text)


def _no_box(box: Any) -> bool:
    """Whether a face_box cell is missing: None, NaN, or pandas' NA (Arrow-backed columns)."""
    return box is None or (pd.api.types.is_scalar(box) and pd.isna(box))


def box_to_text(box: Any) -> str:
    """A face_box cell as the CSV writes it: a JSON list of four numbers (one decimal), or ""."""
    if _no_box(box):
        return ""
    return json.dumps([round(float(v), 1) for v in box])


def _box_to_list(box: Any) -> list[float] | None:
    if _no_box(box):
        return None
    return [round(float(v), 1) for v in box]


def _box_from_arrow(box: Any) -> tuple[float, ...] | None:
    if _no_box(box):
        return None
    return tuple(float(v) for v in box)


def box_from_text(text: Any) -> tuple[float, ...] | None:
    """A face_box cell read back from :func:`box_to_text`'s text (None for "" or a non-string
    such as pandas' NaN)."""
    if not isinstance(text, str) or not text.strip():
        return None
    return tuple(float(v) for v in json.loads(text))


class OutputNotWritableError(OSError):
    """The folder a CSV is to be written into cannot be written; the message says which."""


class PendingCsv:
    """A CSV file reserved before the work that fills it: the temporary file is created at once
    (so a folder that cannot be written is found before any image is scored), then
    :meth:`write` fills it and renames it into place, or :meth:`discard` removes it. As a context
    manager it discards the temporary file on leaving unless :meth:`write` renamed it.

    Args:
        path: Where the CSV goes.

    Raises:
        OutputNotWritableError: The folder cannot be created or written.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                                 dir=self.path.parent)
        except OSError as exc:
            raise OutputNotWritableError(
                f"cannot write the CSV into {printable_path(self.path.parent)} "
                f"({exc.strerror or exc}): choose a folder you can write to") from None
        os.close(handle)
        self.temporary = Path(temporary)

    def __enter__(self) -> PendingCsv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def write(self, frame: pd.DataFrame) -> Path:
        """Write ``frame`` (formula cells neutralised, see :func:`write_csv`; Parquet when the
        path ends in .parquet, see :func:`write_parquet`) and rename the file into place."""
        if is_parquet_path(self.path):
            import pyarrow.parquet as pq

            return self._finish(lambda: pq.write_table(parquet_table(frame), self.temporary))
        out = csv_cells(frame)

        def write_csv_file() -> None:
            with open(self.temporary, "w", newline="", encoding="utf-8") as stream:
                out.to_csv(stream, index=False)

        return self._finish(write_csv_file)

    def _finish(self, write: Callable[[], None]) -> Path:
        try:
            write()
            make_readable(self.temporary)
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        """Remove the temporary file (nothing is written to ``path``)."""
        self.temporary.unlink(missing_ok=True)


def csv_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as :func:`write_csv` writes it: ``face_box`` as JSON text, text cells escaped and
    neutralised, column names too. Every row becomes exactly one line of CSV, since no cell keeps
    a line break."""
    out = frame.copy()
    for column in out.columns:
        if column == "face_box":
            out[column] = out[column].map(box_to_text)
        elif _is_text(out[column]):
            out[column] = text_series((_neutralise(v) if isinstance(v, str) else v
                                       for v in out[column]), out.index)
    out.columns = [_neutralise(str(c)) for c in out.columns]
    return out


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a result table to CSV atomically, with every text cell made safe.

    The file is written to a temporary name in the target folder and renamed into place, so a
    reader never sees half a file. Text cells that hold control characters (such as a line break
    in a file name), bytes that are not UTF-8 or "%" are written escaped (see
    :func:`escape_cell`); cells that a spreadsheet would run as a formula (starting with =, +,
    -, @) or that start with an apostrophe get a leading apostrophe. :func:`read_csv` undoes both,
    so every cell reads back exactly as it was.

    Returns:
        The path written.

    Raises:
        OutputNotWritableError: The folder cannot be created or written.
    """
    return PendingCsv(path).write(frame)


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a result table to Parquet atomically (needs pyarrow).

    Columns keep their types (``face_box`` becomes a list of floats, missing integers stay
    missing); text that Arrow cannot hold as it is (bytes of a file name that are not UTF-8,
    control characters, "%") is stored in :func:`escape_cell` form. :func:`read_parquet` gives
    back the table :func:`read_csv` gives for the same rows.

    Returns:
        The path written.

    Raises:
        ImportError: pyarrow is not installed (the message says how to install it).
    """
    return PendingCsv(path).write(frame)


def parquet_table(frame: pd.DataFrame):
    """A result table as a ``pyarrow.Table`` with the schema's types (see :func:`arrow_schema`)
    and text in :func:`escape_cell` form where needed."""
    _require_pyarrow()
    import pyarrow as pa

    out = frame.copy()
    for column in out.columns:
        if column == "face_box":
            out[column] = out[column].map(_box_to_list).astype(object)
        elif _is_text(out[column]):
            out[column] = text_series((escape_cell(v) if isinstance(v, str) else v
                                       for v in out[column]), out.index)
    table = pa.Table.from_pandas(out, preserve_index=False)
    # The schema's own types, also for columns that happen to be all empty in this table.
    known = arrow_schema()
    return table.cast(pa.schema([known.field(f.name) if f.name in known.names else f
                                 for f in table.schema]))


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a result table as Parquet when ``path`` ends in .parquet or .pq, else as CSV."""
    return PendingCsv(path).write(frame)


def is_parquet_path(path: str | os.PathLike[str]) -> bool:
    """Whether a table at ``path`` is written and read as Parquet (see :data:`PARQUET_SUFFIXES`)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError("Parquet files need pyarrow: pip install pyarrow (or "
                          "pip install \"deepfake-toolkit[ray]\"), or write a .csv") from None


def read_csv(path: str | os.PathLike[str], text_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a result CSV written by :func:`write_csv` back into a result table.

    Args:
        path: The CSV file.
        text_columns: Columns beyond the schema's to read as text (so that "007" or "" stay as
            written instead of becoming numbers or missing values).
    """
    text = {c: object for c in (*_TEXT_COLUMNS, *text_columns)}
    frame = pd.read_csv(path, dtype=text, keep_default_na=False, encoding="utf-8",
                        na_values={c: [""] for c in (*_FLOAT_COLUMNS, *_INT_COLUMNS)})
    frame.columns = [_restore(c) for c in frame.columns]
    for column in frame.columns:
        if _is_text(frame[column]) and column != "face_box":
            frame[column] = text_series((_restore(v) if isinstance(v, str) else v
                                         for v in frame[column]), frame.index)
    if "face_box" in frame:
        frame["face_box"] = frame["face_box"].map(box_from_text).astype(object)
    for column in _BOOL_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map(
                lambda v: str(v).strip().lower() == "true").astype(bool)
    for column in _INT_COLUMNS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in _NULLABLE_BOOL_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map(_nullable_bool).astype("boolean")
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
            frame[column] = text_series(
                ("" if v is None or (pd.api.types.is_scalar(v) and pd.isna(v))
                 else unescape_cell(str(v)) for v in frame[column]), frame.index)
    if "face_box" in frame:
        frame["face_box"] = frame["face_box"].map(_box_from_arrow).astype(object)
    for column in _BOOL_COLUMNS:
        if column in frame:
            frame[column] = frame[column].astype(bool)
    for column in _INT_COLUMNS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in _FLOAT_COLUMNS:
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in _NULLABLE_BOOL_COLUMNS:
        if column in frame:
            frame[column] = frame[column].map(_nullable_bool).astype("boolean")
    return frame


def arrow_schema():
    """The schema's columns as a ``pyarrow.Schema`` (Parquet files and Ray datasets use it)."""
    import pyarrow as pa

    kinds = {"text": pa.string(), "float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(),
             "nullable_bool": pa.bool_(), "box": pa.list_(pa.float64())}
    return pa.schema([(column, kinds[kind]) for column, kind in COLUMN_TYPES.items()])


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
