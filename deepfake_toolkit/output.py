"""Streamed, resumable result files: rows reach the disk as batches finish, and a later run with
the same settings picks up where an interrupted one stopped.

A run that writes ``OUT`` (CSV, or Parquet when it ends in .parquet) keeps beside it:

- ``OUT.partial``: the rows scored so far, as CSV whatever ``OUT``'s format, with a header and
  one line per row, appended and flushed after every batch. Text cells are escaped
  (:func:`~deepfake_toolkit.results.escape_cell`), so no cell holds a line break and a row is
  always exactly one line: after ``kill -9`` at most the line being written is incomplete, and
  it is cut off when the partial is read back. (Parquet keeps its index in a footer written
  last, so a killed Parquet writer leaves an unreadable file; hence CSV for the partial.)
- ``OUT.run.json``: the run's settings (:func:`run_fingerprint`), written before scoring and
  kept after the run, so that a later ``resume`` can check it continues the same run.

At the end of a run (also after Ctrl+C or a ``stop`` event) ``OUT`` is written atomically: the
partial is renamed into place (CSV) or converted (Parquet), and the partial is gone. A run killed
outright leaves the partial, which ``resume=True`` reads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .files import make_readable
from .images import printable_path
from .models import Detector
from .results import (
    COLUMNS,
    OutputNotWritableError,
    PendingCsv,
    csv_cells,
    empty_results,
    is_parquet_path,
    read_csv,
    read_table,
)
from .scoring import Scoring

PARTIAL_SUFFIX = ".partial"
"""Added to the output's name for the rows of a run in progress (or of a killed one)."""

RECORD_SUFFIX = ".run.json"
"""Added to the output's name for the record of the run's settings."""

MTIME_TOLERANCE = 1e-6
"""Seconds two modification times may differ by and still be the same (a CSV float's last digit)."""


class ResumeRefused(ValueError):
    """An output cannot be resumed: it was written with other settings, or without a record of
    them. The message says which settings differ and what to do."""


def run_fingerprint(
    models: Sequence[Detector],
    policies: Sequence[Scoring],
    *,
    max_pixels: int,
    provenance: bool,
) -> dict[str, Any]:
    """The settings that decide a run's rows, as a JSON-able record: a resumed run must match it.

    Two runs whose records are equal give the same row for the same unchanged file. The models
    are named with the SHA-256 of their weight files (retrained weights are another model), each
    with the scoring policy it scored with (:meth:`~deepfake_toolkit.scoring.Scoring.describe`:
    region, face-crop settings, no-face policy, label rule).

    Args:
        models: The loaded models, in the run's order.
        policies: The policy each model scores with (see
            :func:`~deepfake_toolkit.scoring.run_policies`).
        max_pixels, provenance: As for :func:`~deepfake_toolkit.pipeline.classify_files`.

    Returns:
        A dict of plain JSON values (lists, not tuples), comparable with ``==`` after a JSON
        round trip.
    """
    record = {
        "models": [{"name": d.name, "weights_sha256": _file_sha256(d.weights_path),
                    "precision": d.precision, "scoring": policy.describe()}
                   for d, policy in zip(models, policies)],
        "max_pixels": max_pixels,
        "provenance": provenance,
    }
    return json.loads(json.dumps(record))


def _file_sha256(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    return _sha256_of(str(path), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def partial_path(output: str | os.PathLike[str]) -> Path:
    """Where the rows of a run writing ``output`` go while it runs."""
    output = Path(output).expanduser()
    return output.with_name(output.name + PARTIAL_SUFFIX)


def record_path(output: str | os.PathLike[str]) -> Path:
    """Where the settings of the run that wrote ``output`` are recorded."""
    output = Path(output).expanduser()
    return output.with_name(output.name + RECORD_SUFFIX)


def check_writable(output: str | os.PathLike[str]) -> None:
    """Fail at once, before any model is loaded, when ``output``'s folder cannot be created or
    written (:class:`~deepfake_toolkit.results.OutputNotWritableError`)."""
    PendingCsv(output).discard()


class ResultFile:
    """The output of one run: reserved at once, filled batch by batch, completed atomically.

    With ``resume=True`` the rows already in the output (the partial of a killed run if there
    is one, else the finished file) are read first: a file keeps its rows when it has a row
    without error for every model of this run and its size and modification time are those
    recorded; every other file (new, changed, removed, or with an error row) is left in
    :attr:`remaining` to be scored. Without ``resume``, a partial from an earlier run is
    replaced.

    Args:
        path: The output (CSV, or Parquet when it ends in .parquet or .pq).
        settings: The run's :func:`run_fingerprint`.
        files: The files the run is asked to score, in order.
        models: The names of the run's models.
        resume: Keep what an earlier run with the same settings scored.

    Attributes:
        kept: The rows kept from the earlier run (no rows without ``resume``).
        remaining: The files still to score, in the order given.

    Raises:
        OutputNotWritableError: The output's folder cannot be created or written.
        ResumeRefused: ``resume`` and the earlier run had other settings, or no record of them.
    """

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, Any],
                 files: Sequence[str], models: Sequence[str], *, resume: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.partial = partial_path(self.path)
        self.record = record_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _not_writable(self.path, exc) from None
        self.kept = _kept_rows(self._earlier_rows(settings), files, models) if resume \
            else empty_results()
        kept_paths = set(self.kept["path"])
        self.remaining = [f for f in files if f not in kept_paths] if kept_paths else list(files)
        self._write_record(settings)
        self._start_partial()

    def _earlier_rows(self, settings: dict[str, Any]) -> pd.DataFrame:
        source = self.partial if self.partial.exists() else self.path
        if not source.exists():
            return empty_results()
        where = printable_path(self.path)
        try:
            recorded = json.loads(self.record.read_text(encoding="utf-8"))["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ResumeRefused(
                f"cannot resume {where}: its settings were not recorded "
                f"({printable_path(self.record)} is missing or unreadable), so it is not known "
                "which model and options scored it. Run without --resume to score everything "
                "again, or write to another output.") from None
        if recorded != settings:
            raise ResumeRefused(
                f"cannot resume {where}: it was scored with other settings "
                f"({_differences(recorded, settings)}). Resume with the same models and "
                "options, or write to another output, or run without --resume to start again.")
        if source == self.partial:
            _cut_incomplete_line(source)
            if source.stat().st_size == 0:
                return empty_results()
            return read_csv(source)
        return read_table(source)

    def _write_record(self, settings: dict[str, Any]) -> None:
        text = json.dumps({"format": 1, "settings": settings}, indent=1)
        pending = PendingCsv(self.record)
        try:
            pending.temporary.write_text(text + "\n", encoding="utf-8")
            make_readable(pending.temporary)
            os.replace(pending.temporary, self.record)
        except OSError as exc:
            pending.discard()
            raise _not_writable(self.path, exc) from None

    def _start_partial(self) -> None:
        """A fresh partial holding the header and the kept rows, opened for appending."""
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".{self.partial.name}.", suffix=".tmp",
                                                 dir=self.path.parent)
            with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
                csv_cells(self.kept).to_csv(stream, index=False)
            make_readable(temporary)
            os.replace(temporary, self.partial)
            self._stream = open(self.partial, "a", newline="", encoding="utf-8")
        except OSError as exc:
            raise _not_writable(self.path, exc) from None

    def append(self, rows: pd.DataFrame) -> None:
        """Add the rows of a finished batch to the partial and hand them to the operating system
        (they survive the process being killed)."""
        csv_cells(rows[list(COLUMNS)]).to_csv(self._stream, header=False, index=False)
        self._stream.flush()

    def finish(self, frame: pd.DataFrame, rewrite: bool = False) -> Path:
        """Write the output atomically and remove the partial.

        Args:
            frame: The whole table: the kept rows, then every row appended since.
            rewrite: ``frame`` differs from the rows appended (the stability check filled its
                columns afterwards, or the rows were reordered): write it instead of the partial.
        """
        self._stream.close()
        if rewrite or is_parquet_path(self.path):
            PendingCsv(self.path).write(frame)
            self.partial.unlink(missing_ok=True)
        else:
            os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Stop writing and leave the partial for a later ``resume`` (a run that failed)."""
        self._stream.close()

    def discard(self) -> None:
        """Remove the partial and the record: the run is abandoned and writes nothing."""
        self._stream.close()
        self.partial.unlink(missing_ok=True)
        self.record.unlink(missing_ok=True)


def _kept_rows(earlier: pd.DataFrame, files: Sequence[str], models: Sequence[str]) -> pd.DataFrame:
    """The rows of ``earlier`` for files of ``files`` that are unchanged and fully scored."""
    if earlier.empty or not {"file_size", "file_mtime"} <= set(earlier.columns):
        return empty_results()  # nothing scored, or written before the toolkit recorded them
    usable = earlier[(earlier["error"] == "") & earlier["model"].isin(models)
                     & earlier["file_size"].notna() & earlier["file_mtime"].notna()]
    usable = usable.drop_duplicates(["path", "model"], keep="last")
    per_file = usable.groupby("path", sort=False).agg(
        n_models=("model", "size"), size=("file_size", "first"), mtime=("file_mtime", "first"))
    complete = per_file[per_file["n_models"] == len(models)]
    recorded = dict(zip(complete.index, zip(complete["size"], complete["mtime"])))
    done = set()
    for path in files:
        key = recorded.get(path)
        if key is None:
            continue
        try:
            info = os.stat(path)
        except OSError:
            continue
        if info.st_size == key[0] and math.isclose(info.st_mtime, key[1], rel_tol=0,
                                                   abs_tol=MTIME_TOLERANCE):
            done.add(path)
    kept = usable[usable["path"].isin(done)]
    return kept.reset_index(drop=True)[list(COLUMNS)]


def _cut_incomplete_line(path: Path) -> None:
    """Drop a last line that a killed run left half written (every row ends with a newline)."""
    with open(path, "rb+") as stream:
        size = stream.seek(0, os.SEEK_END)
        if size == 0:
            return
        stream.seek(max(0, size - 1))
        if stream.read(1) == b"\n":
            return
        position = size
        while position > 0:
            step = min(1 << 16, position)
            stream.seek(position - step)
            block = stream.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                stream.truncate(position - step + newline + 1)
                return
            position -= step
        stream.truncate(0)


def _differences(recorded: dict[str, Any], now: dict[str, Any]) -> str:
    recorded, now = _flat(recorded), _flat(now)
    changed = [f"{key} was {json.dumps(recorded.get(key))}, now {json.dumps(now.get(key))}"
               for key in sorted(set(recorded) | set(now)) if recorded.get(key) != now.get(key)]
    return "; ".join(changed)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested record as {"models.0.scoring.face_crop.margin": 0.1, ...}, to name what differs."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(index), item) for index, item in enumerate(value))
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _not_writable(path: Path, error: OSError) -> OutputNotWritableError:
    return OutputNotWritableError(
        f"cannot write the output into {printable_path(path.parent)} "
        f"({error.strerror or error}): choose a folder you can write to")


def open_result_file(path: str | os.PathLike[str] | None, models: Sequence[Detector],
                     policies: Sequence[Scoring], files: list[str], *, max_pixels: int,
                     provenance: bool, resume: bool) -> ResultFile | None:
    """The run's streamed output (None without an output path), fingerprinted by
    :func:`run_fingerprint`: what both engines open before scoring. Its ``remaining`` are the
    files left to score.

    Raises:
        ResumeRefused: As :class:`ResultFile`.
    """
    if path is None:
        return None
    settings = run_fingerprint(models, policies, max_pixels=max_pixels, provenance=provenance)
    return ResultFile(path, settings, files, [d.name for d in models], resume=resume)
