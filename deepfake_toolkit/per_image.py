"""The per-image evaluation table: the result schema plus each image's true label, file facts and
the operating point its verdict was made at; written to and read from ``per_image.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .labels import FAKE, REAL
from .perturbations import CLEAN
from .results import COLUMNS, read_csv, write_csv

__all__ = [
    "EVALUATION_COLUMNS", "PER_IMAGE_COLUMNS", "clean_scored", "evaluated_scores",
    "read_per_image", "write_per_image",
]

EVALUATION_COLUMNS: tuple[str, ...] = (
    "true_label",
    "subset",
    "perturbation",
    "file_format",
    "jpeg_quality",
    "file_bytes",
    "calibrated_score",
    "threshold",
    "threshold_rule",
    "calibration",
)
"""Columns the per-image table adds to :data:`deepfake_toolkit.results.COLUMNS`:

- ``true_label``: "real" or "fake", the ground truth.
- ``subset``: where the image belongs within the set (e.g. the generator's folder), or "".
- ``perturbation``: robustness condition ("none" for the files as they are, "jpeg_q50", ...).
- ``file_format``: the file's format as decoded ("jpeg", "png", ...).
- ``jpeg_quality``: IJG quality (1-100) estimated from a JPEG's quantisation tables, or empty.
- ``file_bytes``: file size.
- ``calibrated_score``: fake_score after the model's calibration, or empty without one.
- ``threshold``: the model's threshold; ``label`` is the verdict at it.
- ``threshold_rule``: where the threshold came from (JSON: rule - "model" for the model's own
  operating threshold, "user", "fixed" for 0.5 when the model has none, or the rule it was fitted
  by -, target_fpr, fitted_on, n_real, n_fake); ``calibration``: the score calibration (JSON:
  method, slope, intercept) or "". With ``threshold`` they record the model's
  :class:`~deepfake_toolkit.operating_points.OperatingPoint`, so a report can be rebuilt from the
  CSV alone.
"""
PER_IMAGE_COLUMNS: tuple[str, ...] = COLUMNS + EVALUATION_COLUMNS
TEXT_EVALUATION_COLUMNS = ("true_label", "subset", "perturbation", "file_format",
                            "threshold_rule", "calibration")
NUMERIC_EVALUATION_COLUMNS = ("jpeg_quality", "file_bytes", "calibrated_score", "threshold")


def evaluated_scores(per_image: pd.DataFrame) -> pd.Series:
    """The score each row's verdict is based on: calibrated_score where there is one, else
    fake_score."""
    if "calibrated_score" not in per_image:
        return per_image["fake_score"]
    return per_image["calibrated_score"].where(per_image["calibrated_score"].notna(),
                                               per_image["fake_score"])


def clean_scored(per_image: pd.DataFrame) -> pd.DataFrame:
    """The unperturbed rows with a score and a true label: what metrics are computed on."""
    clean = per_image
    if "perturbation" in per_image:
        clean = per_image[per_image["perturbation"] == CLEAN]
    return clean[clean["fake_score"].notna() & clean["true_label"].isin([REAL, FAKE])]


def write_per_image(per_image: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a per-image table to CSV (atomically, formula-like cells neutralised)."""
    return write_csv(per_image, path)


def read_per_image(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a per-image CSV written by :func:`write_per_image` (or ``evaluate --report``).

    Raises:
        ValueError: The CSV is not a per-image evaluation table.
    """
    table = read_csv(path, text_columns=TEXT_EVALUATION_COLUMNS)
    missing = {"model", "fake_score", "true_label", "path"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a per-image evaluation CSV (missing columns: "
                         f"{', '.join(sorted(missing))}); make one with deepfake-toolkit "
                         "evaluate --report.")
    for column in NUMERIC_EVALUATION_COLUMNS:
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    return table
