"""Evaluate and compare detectors on labelled images: metrics, thresholds, calibration, robustness.

The flow, each step a public function that a notebook can call on its own:

1. :func:`label_files` finds the images under a folder and their true labels (from ``real`` /
   ``fake`` folders, the original system's file-name rule, or a labels CSV).
2. :func:`score_labelled` scores them once with every model through
   :func:`~deepfake_toolkit.pipeline.classify_files` (optionally again under each robustness
   perturbation) and returns the *per-image table*: the result schema plus
   :data:`EVALUATION_COLUMNS`. Saved with :func:`write_per_image`, it is everything a report
   needs.
3. :func:`fit_operating_points` picks a threshold (and optionally a score calibration) per model
   on one labelled set; :func:`save_operating_points` / :func:`load_operating_points` carry them
   to another.
4. :func:`evaluate_table` turns a per-image table into an :class:`Evaluation`: metric tables per
   model and subset, reliability data, robustness, the confound check, figures and the report.

:func:`evaluate_directory` runs all four. Fake is the positive class throughout; scores are
``fake_score`` = P(fake).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .calibration import (
    CALIBRATION_METHODS,
    DEFAULT_THRESHOLD,
    THRESHOLD_RULES,
    CalibrationMethod,
    OperatingPoint,
    ScoreCalibration,
    ThresholdRule,
    UNFITTED_RULES,
    choose_threshold,
    load_operating_points,
    save_operating_points,
)
from .images import find_images
from .metrics import (
    binary_metrics,
    bootstrap_intervals,
    equal_error_rate,
    expected_calibration_error,
    reliability_bins,
    tpr_at_fpr,
    two_classes,
)
from .perturbations import CLEAN, ROBUSTNESS_SUITE, Perturbation, perturbation_name
from .results import COLUMNS, Threshold, read_csv, write_csv

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .models import Detector
    from .pipeline import ModelArg

__all__ = [
    "ALL_IMAGES", "CALIBRATION_METHODS", "EVALUATION_COLUMNS", "PER_IMAGE_COLUMNS",
    "ROBUSTNESS_SUITE", "THRESHOLD_RULES", "ConfoundWarning", "Evaluation", "LabelError",
    "OperatingPoint", "ScoreCalibration", "apply_operating_points", "binary_metrics",
    "bootstrap_intervals", "choose_threshold", "confound_check", "equal_error_rate",
    "estimate_jpeg_quality", "evaluate_directory", "evaluate_table", "expected_calibration_error",
    "file_facts", "fit_operating_points", "folder_label", "label_files", "labels_from_csv",
    "load_operating_points", "metrics_table", "prefix_label", "read_per_image",
    "reliability_bins", "reliability_table", "resolve_operating_points", "robustness_table",
    "save_operating_points",
    "score_labelled", "tpr_at_fpr", "write_per_image",
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
- ``threshold_rule``: how the threshold was chosen (JSON: rule, target_fpr, fitted_on, n_real,
  n_fake); ``calibration``: the score calibration (JSON: method, slope, intercept) or "".
  With ``threshold`` they record the model's :class:`OperatingPoint`, so a report can be rebuilt
  from the CSV alone.
"""
PER_IMAGE_COLUMNS: tuple[str, ...] = COLUMNS + EVALUATION_COLUMNS
_TEXT_EVALUATION_COLUMNS = ("true_label", "subset", "perturbation", "file_format",
                            "threshold_rule", "calibration")
_NUMERIC_EVALUATION_COLUMNS = ("jpeg_quality", "file_bytes", "calibrated_score", "threshold")

LabelsArg = str | os.PathLike[str] | pd.DataFrame
CONFOUND_WARN_AT = 0.7
"""A nuisance feature whose AUC alone is at least this far from chance (>= 0.7 or <= 0.3) is
reported as a confound (when the difference is also unlikely to be chance, see
:data:`CONFOUND_MAX_P`)."""
CONFOUND_MAX_P = 0.01
"""Largest Mann-Whitney p-value at which a nuisance feature is flagged, so that a handful of
images differing by chance raise no alarm."""


class LabelError(ValueError):
    """The true labels could not be worked out; the message says what to fix."""


class ConfoundWarning(UserWarning):
    """Real and fake images differ in something other than being fake (format, size, ...)."""


# --------------------------------------------------------------------------------------------
# Labels


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
        return _check_label_table(labels)
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


def _check_label_table(table: pd.DataFrame) -> pd.DataFrame:
    if not {"path", "true_label"} <= set(table.columns):
        raise LabelError("a label table needs the columns path and true_label")
    labels = table["true_label"].map(_parse_label)
    if labels.isna().any():
        raise LabelError("true_label must be real or fake (or 0/1) in every row")
    return pd.DataFrame({"path": table["path"].map(str), "true_label": labels,
                         "subset": table["subset"].fillna("").map(str)
                         if "subset" in table else ""}).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# File facts (for the confound check)


def _ijg_quantisation_tables() -> np.ndarray:
    """The IJG (libjpeg) luminance tables for quality 1..100, in natural (row-major) order."""
    base = np.array([
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ], dtype=np.int64)
    qualities = np.arange(1, 101)
    scale = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)
    return np.clip((base[None, :] * scale[:, None] + 50) // 100, 1, 255)


_IJG_TABLES = _ijg_quantisation_tables()


def estimate_jpeg_quality(quantization: Mapping[int, Sequence[int]]) -> float:
    """Estimate the IJG quality (1-100) a JPEG was saved at from its luminance table.

    The table is compared with the tables libjpeg makes for every quality; the closest one wins.
    Exact for files written by libjpeg-based encoders (Pillow, OpenCV, most web tools); for
    cameras and editors with their own tables it is the nearest equivalent quality.

    Args:
        quantization: Pillow's ``image.quantization`` (table id -> 64 values, natural order).

    Returns:
        The estimated quality, or NaN when there is no 64-entry luminance table.
    """
    table = quantization.get(0) if quantization else None
    if table is None or len(table) != 64:
        return math.nan
    distance = np.abs(_IJG_TABLES - np.asarray(table, dtype=np.int64)[None, :]).sum(axis=1)
    return float(np.argmin(distance) + 1)


def file_facts(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Format, JPEG quality and size of each file (headers only; pixels are not decoded).

    Returns:
        A table with columns path, file_format, jpeg_quality, file_bytes; unreadable files get
        "" and missing values.
    """
    rows = []
    for path in paths:
        file_format, quality, size = "", math.nan, math.nan
        try:
            size = float(os.stat(path).st_size)
            with Image.open(path) as image:
                file_format = (image.format or "").lower()
                quantization = getattr(image, "quantization", None)
                if quantization:
                    quality = estimate_jpeg_quality(quantization)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass
        rows.append((str(path), file_format, quality, size))
    return pd.DataFrame(rows, columns=["path", "file_format", "jpeg_quality", "file_bytes"])


# --------------------------------------------------------------------------------------------
# Scoring


def load_detectors(model: ModelArg = "default",
                   weights_dir: str | os.PathLike[str] | None = None,
                   device: str = "auto") -> list[Detector]:
    """Load each named model once for a whole job (loaded detectors pass through as they are).

    Args:
        model: A registry name, a loaded detector, or a list of them.
        weights_dir: Folder searched first for weight files.
        device: "auto", "cpu" or "cuda".
    """
    from .pipeline import _as_detectors

    return _as_detectors(model, weights_dir, device)


def score_labelled(
    labelled: pd.DataFrame,
    model: ModelArg = "default",
    face_crop: bool | None = None,
    *,
    perturbations: Sequence[Perturbation] = (),
    threshold: float | None = None,
    **classify_options: Any,
) -> pd.DataFrame:
    """Score labelled images once with every model, clean and under each perturbation.

    Each named model is loaded once (see :func:`load_detectors`) and scores every condition.

    Args:
        labelled: A table from :func:`label_files` (path, true_label, subset).
        model: A registry name, a loaded detector, or a list of them.
        face_crop: Score face crops (True) or whole images (False); None: as each model's own
            policy says (``detector.scoring``).
        perturbations: Robustness conditions, each applied to every image of both classes after
            decoding and before face detection (e.g. :data:`ROBUSTNESS_SUITE`).
        threshold: A threshold of the user's, recorded as every model's operating point; None
            records each model's own (see :func:`default_operating_points`).
        **classify_options: Passed to :func:`~deepfake_toolkit.pipeline.classify_files`
            (no_face, batch_size, device, num_workers, weights_dir, progress, provenance, ...);
            ``stability=True`` checks the unperturbed images only.

    Returns:
        The per-image table: :data:`PER_IMAGE_COLUMNS`, one row per image, model and perturbation,
        with each model's default operating point filled in.
    """
    from .pipeline import classify_files

    if "output_csv" in classify_options:
        raise ValueError("score_labelled writes no CSV itself: save its table with "
                         "write_per_image")
    labelled = _check_label_table(labelled)
    files = list(labelled["path"])
    detectors = load_detectors(model, classify_options.get("weights_dir"),
                               classify_options.get("device", "auto"))
    if face_crop is not None:
        classify_options["face_crop"] = face_crop
    # The stability check re-encodes the clean images itself; perturbed copies skip it.
    stability = bool(classify_options.pop("stability", False))
    frames = []
    for perturbation in (None, *perturbations):
        frame = classify_files(files, model=detectors, perturb=perturbation,
                               threshold=threshold, stability=stability and perturbation is None,
                               **classify_options)
        frame["perturbation"] = perturbation_name(perturbation)
        frames.append(frame)
    scored = pd.concat(frames, ignore_index=True)
    scored["path"] = scored["path"].map(str)
    truth = labelled.assign(path=[str(Path(p).expanduser()) for p in labelled["path"]])
    facts = file_facts(truth["path"])
    table = scored.merge(truth, on="path", how="left").merge(facts, on="path", how="left")
    return apply_operating_points(table, default_operating_points(detectors, threshold))


# --------------------------------------------------------------------------------------------
# Thresholds and calibration on per-image tables


def default_operating_points(models: Iterable[str | Detector],
                             threshold: float | None = None) -> dict[str, OperatingPoint]:
    """Each model's operating point when nothing is fitted: ``threshold`` (rule "user"), else
    the loaded model's own operating threshold (``detector.scoring``, rule "model"), else 0.5
    (rule "fixed": a model without one, or a bare name whose model is not at hand)."""
    points = {}
    for model in models:
        name = model if isinstance(model, str) else model.name
        own = None if isinstance(model, str) else model.scoring.threshold
        if threshold is not None:
            points[name] = OperatingPoint(name, float(threshold), "user")
        elif own is not None:
            points[name] = OperatingPoint(name, float(own), "model")
        else:
            points[name] = OperatingPoint(name, DEFAULT_THRESHOLD, "fixed")
    return points


def fit_operating_points(
    per_image: pd.DataFrame,
    *,
    rule: ThresholdRule = "balanced_accuracy",
    target_fpr: float = 0.05,
    threshold: float | None = None,
    calibration: CalibrationMethod | None = None,
    fitted_on: str = "",
    defaults: Mapping[str, OperatingPoint] | None = None,
) -> dict[str, OperatingPoint]:
    """Fit each model's calibration (optional) and then its threshold on labelled scores.

    Only unperturbed, scored images count. The threshold is chosen on the calibrated scores.

    Args:
        per_image: A per-image table (:func:`score_labelled`) of the tuning images.
        rule: "balanced_accuracy" (maximise it), "fpr" (highest TPR at FPR <= ``target_fpr``) or
            "fixed" (no fitted threshold: ``threshold``, else the model's own, else 0.5).
        target_fpr: False-positive rate for rule "fpr".
        threshold: The user's threshold for rule "fixed".
        calibration: None, "temperature" or "platt".
        fitted_on: Where the images came from, recorded with each operating point.
        defaults: Each model's own operating point, kept by rule "fixed" without a
            ``threshold`` (see :func:`default_operating_points`); None takes those recorded in
            ``per_image`` by :func:`score_labelled`.

    Returns:
        Model name -> :class:`OperatingPoint`.

    Raises:
        ValueError: A model has no scored real or no scored fake image to fit on.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {THRESHOLD_RULES}, not {rule!r}")
    if rule == "fpr" and not 0.0 <= target_fpr <= 1.0:
        raise ValueError(f"target FPR must lie in [0, 1], got {target_fpr}")
    if defaults is None:
        defaults = model_operating_points(per_image)
    points = {}
    for model, rows in _clean_scored(per_image).groupby("model", sort=False):
        y_true = (rows["true_label"] == FAKE).to_numpy(int)
        raw = rows["fake_score"].to_numpy(float)
        if (rule != "fixed" or calibration) and not two_classes(y_true):
            raise ValueError(f"cannot fit a threshold or calibration for {model}: the tuning "
                             "images need scored real and fake images")
        fitted = ScoreCalibration.fit(y_true, raw, calibration) if calibration else None
        scores = fitted(raw) if fitted else raw
        if rule != "fixed":
            value, recorded = choose_threshold(y_true, scores,
                                               target_fpr if rule == "fpr" else None), rule
        elif threshold is not None:
            value, recorded = threshold, "user"
        else:
            own = defaults.get(str(model)) or default_operating_points([str(model)])[str(model)]
            value, recorded = own.threshold, own.rule
        points[str(model)] = OperatingPoint(
            model=str(model), threshold=float(value), rule=recorded,
            target_fpr=target_fpr if rule == "fpr" else None, calibration=fitted,
            fitted_on=fitted_on, n_real=int((y_true == 0).sum()), n_fake=int(y_true.sum()))
    return points


def apply_operating_points(per_image: pd.DataFrame,
                           points: Mapping[str, OperatingPoint]) -> pd.DataFrame:
    """Calibrate scores, set thresholds and re-derive the verdict ``label`` of every scored row.

    Models without an entry in ``points`` get the default (see :func:`default_operating_points`).

    Returns:
        A copy of ``per_image`` with calibrated_score, threshold, threshold_rule, calibration and
        label filled in.
    """
    table = per_image.copy()
    for column in _NUMERIC_EVALUATION_COLUMNS:
        if column not in table:
            table[column] = np.nan
    for column in _TEXT_EVALUATION_COLUMNS:
        if column not in table:
            table[column] = CLEAN if column == "perturbation" else ""
    table["calibrated_score"] = np.nan
    table["threshold_rule"] = table["threshold_rule"].astype(object)
    table["calibration"] = table["calibration"].astype(object)
    table["label"] = table["label"].astype(object)
    for model, index in table.groupby("model", sort=False).groups.items():
        point = points.get(str(model)) or default_operating_points([str(model)])[str(model)]
        raw = table.loc[index, "fake_score"].to_numpy(float)
        used = point.scores(raw)
        if point.calibration:
            table.loc[index, "calibrated_score"] = used
        table.loc[index, "threshold"] = point.threshold
        table.loc[index, "threshold_rule"] = json.dumps(
            {"rule": point.rule, "target_fpr": point.target_fpr, "fitted_on": point.fitted_on,
             "n_real": point.n_real, "n_fake": point.n_fake})
        table.loc[index, "calibration"] = (json.dumps(point.calibration.to_dict())
                                           if point.calibration else "")
        if "label_rule" in table:
            table.loc[index, "label_rule"] = point.label_rule
        scored = ~np.isnan(used)
        verdict = Threshold(point.threshold)
        table.loc[index[scored], "label"] = [verdict(v) for v in used[scored]]
    ordered = [c for c in PER_IMAGE_COLUMNS if c in table]
    return table[[*ordered, *[c for c in table.columns if c not in PER_IMAGE_COLUMNS]]]


def operating_points_from_table(per_image: pd.DataFrame) -> dict[str, OperatingPoint]:
    """The operating points recorded in a per-image table (its threshold and calibration
    columns); models without a record get the default."""
    points = {}
    for model, rows in per_image.groupby("model", sort=False):
        first = rows.iloc[0]
        threshold = first.get("threshold")
        if threshold is None or pd.isna(threshold):
            points[str(model)] = default_operating_points([str(model)])[str(model)]
            continue
        rule = json.loads(first["threshold_rule"]) if first.get("threshold_rule") else {}
        calibration = first.get("calibration")
        points[str(model)] = OperatingPoint.from_dict({
            "model": model, "threshold": threshold, **rule,
            "calibration": json.loads(calibration) if calibration else None})
    return points


def model_operating_points(per_image: pd.DataFrame) -> dict[str, OperatingPoint]:
    """The operating points a per-image table records that were not fitted (rules "model",
    "user" and "fixed"): what :func:`fit_operating_points` keeps for rule "fixed"."""
    return {model: point for model, point in operating_points_from_table(per_image).items()
            if point.rule in UNFITTED_RULES}


# --------------------------------------------------------------------------------------------
# Tables


def evaluated_scores(per_image: pd.DataFrame) -> pd.Series:
    """The score each row's verdict is based on: calibrated_score where there is one, else
    fake_score."""
    if "calibrated_score" not in per_image:
        return per_image["fake_score"]
    return per_image["calibrated_score"].where(per_image["calibrated_score"].notna(),
                                               per_image["fake_score"])


def _clean_scored(per_image: pd.DataFrame) -> pd.DataFrame:
    clean = per_image
    if "perturbation" in per_image:
        clean = per_image[per_image["perturbation"] == CLEAN]
    return clean[clean["fake_score"].notna() & clean["true_label"].isin([REAL, FAKE])]


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


def metrics_table(per_image: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0,
                  n_bins: int = 10) -> pd.DataFrame:
    """Metrics per model and subset on the unperturbed images.

    Each model's verdicts use the threshold and calibration recorded in the table (see
    :func:`apply_operating_points`). Unscored images (unreadable, or skipped for having no face)
    are left out and counted in ``n_unscored``.

    Returns:
        One row per (model, subset): model, subset, other_class_from_all, n_unscored and the
        keys of :func:`binary_metrics`.
    """
    clean = per_image
    if "perturbation" in per_image:
        clean = per_image[per_image["perturbation"] == CLEAN]
    clean = clean[clean["true_label"].isin([REAL, FAKE])]
    rows = []
    for model, model_rows in clean.groupby("model", sort=False):
        threshold = _recorded_threshold(model_rows)
        for subset, rows_in, borrowed in subset_views(model_rows):
            scored = rows_in[rows_in["fake_score"].notna()]
            metrics = binary_metrics((scored["true_label"] == FAKE).to_numpy(int),
                                     evaluated_scores(scored).to_numpy(float), threshold,
                                     n_bootstrap=n_bootstrap, seed=seed, n_bins=n_bins)
            rows.append({"model": model, "subset": subset, "other_class_from_all": borrowed,
                         "n_unscored": int(len(rows_in) - len(scored)), **metrics})
    return pd.DataFrame(rows)


def _recorded_threshold(rows: pd.DataFrame) -> float:
    values = rows["threshold"].dropna() if "threshold" in rows else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else DEFAULT_THRESHOLD


def reliability_table(per_image: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Reliability bins (see :func:`reliability_bins`) per model on the unperturbed images."""
    frames = []
    for model, rows in _clean_scored(per_image).groupby("model", sort=False):
        bins = reliability_bins((rows["true_label"] == FAKE).to_numpy(int),
                                evaluated_scores(rows).to_numpy(float), n_bins)
        frames.append(bins.assign(model=model))
    if not frames:
        return pd.DataFrame(columns=["model", "bin", "lower", "upper", "count", "mean_score",
                                     "fraction_fake"])
    table = pd.concat(frames, ignore_index=True)
    return table[["model", *[c for c in table.columns if c != "model"]]]


def robustness_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """AUC and verdict accuracy per model and perturbation.

    Returns:
        One row per (model, perturbation): n_real, n_fake, n_unscored, auc, auc_drop (clean AUC
        minus this one), balanced_accuracy, real_accuracy and fake_accuracy at the model's
        operating point. Empty when the table holds no perturbed rows.
    """
    if "perturbation" not in per_image or (per_image["perturbation"] == CLEAN).all():
        return pd.DataFrame(columns=["model", "perturbation", "n_real", "n_fake", "n_unscored",
                                     "auc", "auc_drop", "balanced_accuracy", "real_accuracy",
                                     "fake_accuracy"])
    labelled = per_image[per_image["true_label"].isin([REAL, FAKE])]
    rows = []
    for (model, perturbation), group in labelled.groupby(["model", "perturbation"], sort=False):
        scored = group[group["fake_score"].notna()]
        metrics = binary_metrics((scored["true_label"] == FAKE).to_numpy(int),
                                 evaluated_scores(scored).to_numpy(float),
                                 _recorded_threshold(group), n_bootstrap=0)
        rows.append({"model": model, "perturbation": perturbation, "n_real": metrics["n_real"],
                     "n_fake": metrics["n_fake"], "n_unscored": int(len(group) - len(scored)),
                     "auc": metrics["auc"], "balanced_accuracy": metrics["balanced_accuracy"],
                     "real_accuracy": metrics["real_accuracy"],
                     "fake_accuracy": metrics["fake_accuracy"]})
    table = pd.DataFrame(rows)
    clean_auc = table[table["perturbation"] == CLEAN].set_index("model")["auc"]
    table["auc_drop"] = table["model"].map(clean_auc) - table["auc"]
    return table[["model", "perturbation", "n_real", "n_fake", "n_unscored", "auc", "auc_drop",
                  "balanced_accuracy", "real_accuracy", "fake_accuracy"]]


# --------------------------------------------------------------------------------------------
# Confound check


def _feature_auc(y_true: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """AUC of a feature at telling fake from real, and the two-sided Mann-Whitney p-value of
    the difference (NaNs when a class has no value)."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    keep = ~np.isnan(values)
    y_true, values = y_true[keep], values[keep]
    if not two_classes(y_true):
        return math.nan, math.nan
    auc = float(roc_auc_score(y_true, values))
    if np.ptp(values) == 0:
        return auc, 1.0
    p_value = mannwhitneyu(values[y_true == 1], values[y_true == 0]).pvalue
    return auc, float(p_value)


def _format_shares(formats: pd.Series) -> str:
    shares = formats.replace("", "unreadable").value_counts(normalize=True)
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.head(3).items())


def _median_text(values: pd.Series, unit: str, scale: float = 1.0) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    median = values.median() / scale
    return f"median {median:,.0f}{unit}" if abs(median) >= 100 else f"median {median:.3g}{unit}"


def confound_check(per_image: pd.DataFrame, warn_at: float = CONFOUND_WARN_AT,
                   max_p: float = CONFOUND_MAX_P) -> pd.DataFrame:
    """Check whether real and fake images differ in things a detector should not care about.

    A detector can learn the file format or the image size instead of the fake. For each
    nuisance feature - file format, JPEG quality (JPEGs only), resolution (pixels), file size and
    bytes per pixel - the ROC AUC of the feature *alone* at telling fake from real is computed
    (for the format, each format's in-sample share of fakes serves as its score). An AUC near 0.5
    means the classes look alike; far from it (>= ``warn_at`` or <= 1 - ``warn_at``) means a
    model could score well on this set without looking at faces at all. A feature is flagged
    only when the difference is also unlikely to be chance (Mann-Whitney p-value < ``max_p``),
    so a few images cannot raise an alarm on their own.

    Args:
        per_image: A per-image table (only unperturbed rows and one model's copy are used).
        warn_at: Separability, max(AUC, 1 - AUC), from which a feature is flagged.
        max_p: Largest p-value at which a feature is flagged.

    Returns:
        One row per (subset, feature): subset, feature, auc, separability, p_value, real, fake
        (short summaries of each class), confounded (bool).
    """
    clean = per_image
    if "perturbation" in per_image:
        clean = per_image[per_image["perturbation"] == CLEAN]
    images = clean[clean["true_label"].isin([REAL, FAKE])].drop_duplicates("path")
    rows = []
    for subset, rows_in, _ in subset_views(images):
        y_true = (rows_in["true_label"] == FAKE).to_numpy(int)
        is_fake = y_true == 1
        width = _numeric_column(rows_in, "width")
        height = _numeric_column(rows_in, "height")
        pixels = width * height
        size = _numeric_column(rows_in, "file_bytes")
        quality = _numeric_column(rows_in, "jpeg_quality")
        formats = rows_in["file_format"].fillna("").astype(str) if "file_format" in rows_in \
            else pd.Series("", index=rows_in.index)
        fake_share = formats.map(pd.Series(is_fake, index=rows_in.index).groupby(formats).mean())
        features = [
            ("file format", fake_share.to_numpy(float),
             _format_shares(formats[~is_fake]), _format_shares(formats[is_fake])),
            ("JPEG quality", quality.to_numpy(float),
             _median_text(quality[~is_fake], ""), _median_text(quality[is_fake], "")),
            ("resolution (pixels)", pixels.to_numpy(float),
             _resolution_text(width[~is_fake], height[~is_fake]),
             _resolution_text(width[is_fake], height[is_fake])),
            ("file size (bytes)", size.to_numpy(float),
             _median_text(size[~is_fake], " kB", 1000), _median_text(size[is_fake], " kB", 1000)),
            ("bytes per pixel", (size / pixels).to_numpy(float),
             _ratio_text((size / pixels)[~is_fake]), _ratio_text((size / pixels)[is_fake])),
        ]
        for name, values, real_text, fake_text in features:
            auc, p_value = _feature_auc(y_true, values)
            separability = max(auc, 1 - auc) if not math.isnan(auc) else math.nan
            rows.append({"subset": subset, "feature": name, "auc": auc,
                         "separability": separability, "p_value": p_value, "real": real_text,
                         "fake": fake_text,
                         "confounded": bool(separability >= warn_at and p_value < max_p)})
    return pd.DataFrame(rows, columns=["subset", "feature", "auc", "separability", "p_value",
                                       "real", "fake", "confounded"])


def _numeric_column(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table:
        return pd.Series(np.nan, index=table.index)
    return pd.to_numeric(table[column], errors="coerce").astype(float)


def _resolution_text(width: pd.Series, height: pd.Series) -> str:
    if width.dropna().empty:
        return "-"
    return f"median {width.median():.0f}x{height.median():.0f} px"


def _ratio_text(values: pd.Series) -> str:
    values = values.dropna()
    return f"median {values.median():.2f}" if len(values) else "-"


def confound_messages(confounds: pd.DataFrame) -> list[str]:
    """One sentence per feature flagged by :func:`confound_check` (in all images or a subset)."""
    messages = []
    flagged = confounds[confounds["confounded"]]
    for feature, rows in flagged.groupby("feature", sort=False):
        first = rows.iloc[0]
        where = "" if first["subset"] == ALL_IMAGES else f" in subset {first['subset']}"
        others = [s for s in rows["subset"] if s != first["subset"]]
        also = f" The same holds in subsets: {', '.join(others)}." if others else ""
        messages.append(
            f"Real and fake images{where} differ in {feature}: that feature alone tells them "
            f"apart with AUC {first['separability']:.2f} (real: {first['real']}; fake: "
            f"{first['fake']}).{also} A detector may score well here by learning this instead of "
            "the fake: balance the classes on it, or re-encode both the same way, before trusting "
            "the metrics.")
    return messages


# --------------------------------------------------------------------------------------------
# The evaluation


@dataclass
class Evaluation:
    """Everything an evaluation found, as tables; :meth:`figures` and :meth:`write` present it.

    Attributes:
        per_image: The per-image table (:data:`PER_IMAGE_COLUMNS`).
        metrics: :func:`metrics_table`.
        reliability: :func:`reliability_table`.
        robustness: :func:`robustness_table` (empty without perturbations).
        confounds: :func:`confound_check`.
        operating_points: Model name -> :class:`OperatingPoint` used for the verdicts.
        notes: Caveats to read with the numbers.
        settings: How the evaluation was run (for the record in the JSON and the report).
        heatmaps: Heatmaps to show in the report (from
            :func:`deepfake_toolkit.explain.top_heatmaps`), or None.
    """

    per_image: pd.DataFrame
    metrics: pd.DataFrame
    reliability: pd.DataFrame
    robustness: pd.DataFrame
    confounds: pd.DataFrame
    operating_points: dict[str, OperatingPoint]
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    heatmaps: pd.DataFrame | None = None

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.per_image["model"]))

    @property
    def overall(self) -> pd.DataFrame:
        """The metrics rows that cover all images, one per model."""
        return self.metrics[self.metrics["subset"] == ALL_IMAGES].reset_index(drop=True)

    @property
    def warnings(self) -> list[str]:
        """Confound findings, in words."""
        return confound_messages(self.confounds)

    def figures(self) -> dict[str, go.Figure]:
        """The report's plotly figures by name (roc, pr, histogram, reliability, confusion,
        subsets, robustness; the last two only when there is something to show)."""
        from . import plots

        clean = _clean_scored(self.per_image).assign(score=lambda t: evaluated_scores(t))
        figures = {
            "roc": plots.roc_figure(clean, score_column="score"),
            "pr": plots.pr_figure(clean, score_column="score"),
            "histogram": plots.score_histogram_figure(clean, score_column="score"),
            "reliability": plots.reliability_figure(self.reliability),
            "confusion": plots.confusion_figure(self.overall),
        }
        if (self.metrics["subset"] != ALL_IMAGES).any():
            figures["subsets"] = plots.subset_figure(self.metrics)
        if not self.robustness.empty:
            figures["robustness"] = plots.robustness_figure(self.robustness)
        return figures

    def write(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """Write the per-image CSV, metrics (CSV and JSON), operating points and the HTML report.

        Returns:
            What was written, by kind.
        """
        from .report import write_report

        return write_report(self, folder)

    def summary(self) -> str:
        """A few lines for a terminal: each model's headline numbers and any warning."""
        lines = []
        for row in self.overall.itertuples(index=False):
            lines.append(
                f"{row.model}: AUC {_fmt(row.auc)} [{_fmt(row.auc_low)}-{_fmt(row.auc_high)}], "
                f"balanced accuracy {_fmt(row.balanced_accuracy)} at threshold "
                f"{row.threshold:.3f}, TPR at 5% FPR {_fmt(row.tpr_at_fpr_5pct)}, EER "
                f"{_fmt(row.eer)}, ECE {_fmt(row.ece)} ({row.n_real} real, {row.n_fake} fake"
                + (f", {row.n_unscored} unscored" if row.n_unscored else "") + ")")
        perturbed = self.robustness[(self.robustness["perturbation"] != CLEAN)
                                    & self.robustness["auc_drop"].notna()]
        if not perturbed.empty:
            worst = perturbed.sort_values("auc_drop", ascending=False).drop_duplicates("model")
            for row in worst.itertuples(index=False):
                lines.append(f"{row.model}: largest AUC drop {_fmt(row.auc_drop)} under "
                             f"{row.perturbation}" if row.auc_drop > 0 else
                             f"{row.model}: no AUC drop under any perturbation")
        lines.extend(f"warning: {text}" for text in self.warnings)
        lines.extend(f"note: {text}" for text in self.notes)
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def _evaluation_notes(per_image: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    notes = []
    overall = metrics[metrics["subset"] == ALL_IMAGES]
    unscored = overall[overall["n_unscored"] > 0]
    for row in unscored.itertuples(index=False):
        notes.append(f"{row.model}: {row.n_unscored} images were not scored (unreadable, or "
                     "skipped for having no face) and are left out of the metrics.")
    small = overall[(overall["n_real"] > 0) & (overall["n_real"] < 100)]
    if len(small):
        notes.append(f"Only {int(small['n_real'].min())} real images: TPR at 1% FPR can only be "
                     "measured at 0% FPR, and every rate has a wide interval.")
    single = overall[(overall["n_real"] == 0) | (overall["n_fake"] == 0)]
    if len(single):
        notes.append("Only one class was scored: AUC, AP, EER and balanced accuracy need real "
                     "and fake images.")
    return notes


def evaluate_table(
    per_image: pd.DataFrame,
    operating_points: Mapping[str, OperatingPoint] | None = None,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    confound_warn_at: float = CONFOUND_WARN_AT,
    notes: Sequence[str] = (),
    settings: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Evaluate a per-image table (from :func:`score_labelled` or :func:`read_per_image`).

    Args:
        per_image: The per-image table.
        operating_points: Thresholds and calibrations to apply (see :func:`fit_operating_points`,
            :func:`load_operating_points`); None keeps those recorded in the table.
        n_bootstrap: Resamples for the 95% intervals (0 turns them off).
        seed: Seed of the bootstrap.
        n_bins: Bins of the reliability data and the ECE.
        confound_warn_at: See :func:`confound_check`.
        notes: Extra caveats to carry into the report.
        settings: How the evaluation was run, recorded in the report.

    Returns:
        An :class:`Evaluation`. Confounds also raise a :class:`ConfoundWarning`.
    """
    missing = {"model", "fake_score", "true_label", "path"} - set(per_image.columns)
    if missing:
        raise ValueError(f"not a per-image evaluation table: missing {', '.join(sorted(missing))}")
    points = dict(operating_points) if operating_points is not None \
        else operating_points_from_table(per_image)
    table = apply_operating_points(per_image, points)
    points = {m: points.get(m) or default_operating_points([m])[m]
              for m in map(str, table["model"].unique())}
    metrics = metrics_table(table, n_bootstrap=n_bootstrap, seed=seed, n_bins=n_bins)
    confounds = confound_check(table, confound_warn_at)
    for message in confound_messages(confounds):
        warnings.warn(message, ConfoundWarning, stacklevel=2)
    return Evaluation(
        per_image=table, metrics=metrics, reliability=reliability_table(table, n_bins),
        robustness=robustness_table(table), confounds=confounds, operating_points=points,
        notes=[*notes, *_evaluation_notes(table, metrics)],
        settings={"n_bootstrap": n_bootstrap, "seed": seed, "n_bins": n_bins,
                  "confound_warn_at": confound_warn_at, **(settings or {})})


def write_per_image(per_image: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a per-image table to CSV (atomically, formula-like cells neutralised)."""
    return write_csv(per_image, path)


def read_per_image(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a per-image CSV written by :func:`write_per_image` (or ``evaluate --report``).

    Raises:
        ValueError: The CSV is not a per-image evaluation table.
    """
    table = read_csv(path, text_columns=_TEXT_EVALUATION_COLUMNS)
    missing = {"model", "fake_score", "true_label", "path"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} is not a per-image evaluation CSV (missing columns: "
                         f"{', '.join(sorted(missing))}); make one with deepfake-toolkit "
                         "evaluate --report.")
    for column in _NUMERIC_EVALUATION_COLUMNS:
        if column in table:
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    return table


def evaluate_directory(
    root: str | os.PathLike[str],
    model: ModelArg = "default",
    labels: LabelsArg = "folder",
    face_crop: bool | None = None,
    *,
    robustness: bool | Sequence[Perturbation] = False,
    operating_points: Mapping[str, OperatingPoint] | str | os.PathLike[str] | None = None,
    tune_on: str | os.PathLike[str] | pd.DataFrame | None = None,
    tune_labels: LabelsArg | None = None,
    threshold_rule: ThresholdRule = "fixed",
    threshold: float | None = None,
    target_fpr: float = 0.05,
    calibration: CalibrationMethod | None = None,
    recursive: bool = True,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_bins: int = 10,
    **classify_options: Any,
) -> Evaluation:
    """Label, score and evaluate a folder with one or more models.

    Args:
        root: Folder of labelled images.
        model: A registry name, a loaded detector, or a list of them.
        labels: How true labels are found (see :func:`label_files`).
        face_crop: Score face crops (True) or whole images (False); None: as each model's own
            policy says.
        robustness: True for :data:`ROBUSTNESS_SUITE`, or a list of perturbations.
        operating_points: Saved thresholds/calibrations to apply (a mapping or a JSON path from
            :func:`save_operating_points`); excludes fitting new ones.
        tune_on: Where thresholds and calibrations are fitted: a labelled folder (scored with the
            same models and options), a per-image CSV, or a per-image table. None fits them on
            ``root`` itself, which flatters the verdict metrics (a note says so).
        tune_labels: How ``tune_on``'s labels are found (default: as ``labels`` for "folder" and
            "prefix", else "folder").
        threshold_rule: "fixed", "balanced_accuracy" or "fpr" (see :func:`fit_operating_points`).
        threshold: The user's threshold for rule "fixed" (default: the loaded model's own
            operating threshold, else 0.5).
        target_fpr: False-positive rate for rule "fpr".
        calibration: None, "temperature" or "platt".
        recursive: Search sub-folders.
        n_bootstrap: Resamples for the 95% intervals.
        seed: Seed of the bootstrap.
        n_bins: Bins of the reliability data and the ECE.
        **classify_options: Passed to :func:`~deepfake_toolkit.pipeline.classify_files`.

    Each named model is loaded once and scores the folder, every perturbation and ``tune_on``.

    Returns:
        An :class:`Evaluation`; call ``.write(folder)`` for the report.

    Example:
        >>> from deepfake_toolkit.evaluate import evaluate_directory  # doctest: +SKIP
        >>> result = evaluate_directory("faces/", ["default", "vit-dima"])  # doctest: +SKIP
        >>> result.overall[["model", "auc", "balanced_accuracy"]]  # doctest: +SKIP
    """
    if operating_points is not None:
        if threshold_rule != "fixed" or calibration is not None or threshold is not None:
            raise ValueError("give either saved operating points or a threshold, rule or "
                             "calibration, not both")
        if isinstance(operating_points, (str, os.PathLike)):
            operating_points = load_operating_points(operating_points)  # fail before scoring
    perturbations = ROBUSTNESS_SUITE if robustness is True else tuple(robustness or ())
    labelled = label_files(root, labels, recursive=recursive)
    detectors = load_detectors(model, classify_options.get("weights_dir"),
                               classify_options.get("device", "auto"))
    per_image = score_labelled(labelled, detectors, face_crop, perturbations=perturbations,
                               threshold=threshold, **classify_options)
    if tune_labels is None:
        tune_labels = labels if isinstance(labels, str) and labels in ("folder", "prefix") \
            else "folder"
    points, notes = resolve_operating_points(
        per_image, operating_points=operating_points, tune_on=tune_on, tune_labels=tune_labels,
        threshold_rule=threshold_rule, threshold=threshold, target_fpr=target_fpr,
        calibration=calibration, model=detectors, face_crop=face_crop, recursive=recursive,
        **classify_options)
    settings = {"root": str(root),
                "labels": "table" if isinstance(labels, pd.DataFrame) else str(labels),
                "face_crop": bool(per_image["face_crop"].fillna(False).astype(bool).any()),
                "perturbations": [perturbation_name(p) for p in perturbations]}
    return evaluate_table(per_image, points, n_bootstrap=n_bootstrap, seed=seed, n_bins=n_bins,
                          notes=notes, settings=settings)


def resolve_operating_points(
    per_image: pd.DataFrame,
    *,
    operating_points: Mapping[str, OperatingPoint] | str | os.PathLike[str] | None = None,
    tune_on: str | os.PathLike[str] | pd.DataFrame | None = None,
    tune_labels: LabelsArg = "folder",
    threshold_rule: ThresholdRule = "fixed",
    threshold: float | None = None,
    target_fpr: float = 0.05,
    calibration: CalibrationMethod | None = None,
    model: ModelArg | None = None,
    face_crop: bool | None = None,
    recursive: bool = True,
    **classify_options: Any,
) -> tuple[dict[str, OperatingPoint] | None, list[str]]:
    """Work out the operating points an evaluation of ``per_image`` should use.

    Args:
        per_image: The per-image table under evaluation.
        operating_points: Saved ones to apply (mapping or JSON path); excludes fitting.
        tune_on: Where to fit: a labelled folder (scored with ``model``), a per-image CSV, or a
            per-image table; None fits on ``per_image`` itself (and says so in a note).
        tune_labels: How ``tune_on``'s labels are found when it is a folder.
        threshold_rule, threshold, target_fpr, calibration: See :func:`fit_operating_points`;
            rule "fixed" without a threshold keeps the models' own operating points recorded in
            ``per_image``.
        model: Models to score ``tune_on`` with, best loaded ones (default: load the models of
            ``per_image`` by name).
        face_crop, recursive, **classify_options: How to score ``tune_on``.

    Returns:
        (operating points, or None to keep those recorded in the table; notes for the report).

    Raises:
        ValueError: Saved operating points and a rule to fit were both given, or a file is not
            what it should be.
    """
    fitting = threshold_rule != "fixed" or calibration is not None
    if operating_points is not None and (fitting or threshold is not None):
        raise ValueError("give either saved operating points or a threshold, rule or "
                         "calibration, not both")
    if operating_points is not None:
        if isinstance(operating_points, (str, os.PathLike)):
            return load_operating_points(operating_points), []
        return dict(operating_points), []
    models = list(dict.fromkeys(map(str, per_image["model"])))
    if not fitting:
        return (default_operating_points(models, threshold) if threshold is not None
                else None), []
    notes = []
    if tune_on is None:
        tuning, fitted_on = per_image, "the evaluated images"
        notes.append("The threshold/calibration was fitted on the evaluated images themselves, "
                     "so the verdict metrics (accuracy, F1, ECE) are optimistic; fit on a "
                     "separate labelled folder (tune_on / --tune-on).")
    elif isinstance(tune_on, pd.DataFrame):
        tuning, fitted_on = tune_on, "a per-image table"
    elif Path(tune_on).expanduser().is_file():
        tuning, fitted_on = read_per_image(tune_on), str(tune_on)
    else:
        tuning = score_labelled(label_files(tune_on, tune_labels, recursive=recursive),
                                model if model is not None else models, face_crop,
                                **classify_options)
        fitted_on = str(tune_on)
    missing = set(models) - set(map(str, tuning["model"]))
    if missing:
        raise ValueError(f"the tuning images have no scores from {', '.join(sorted(missing))}")
    points = fit_operating_points(tuning, rule=threshold_rule, target_fpr=target_fpr,
                                  threshold=threshold, calibration=calibration,
                                  fitted_on=fitted_on, defaults=model_operating_points(per_image))
    return {m: points[m] for m in models}, notes
