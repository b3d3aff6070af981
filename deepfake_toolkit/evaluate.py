"""Evaluate and compare detectors on labelled images: metrics, thresholds, calibration, robustness.

The flow, each step a public function that a notebook can call on its own:

1. :func:`~deepfake_toolkit.labels.label_files` finds the images under a folder and their true
   labels (from ``real`` / ``fake`` folders, the original system's file-name rule, or a labels
   CSV).
2. :func:`score_labelled` loads each model once and scores the images with all of them through
   :func:`~deepfake_toolkit.pipeline.classify_files` (optionally again under each robustness
   perturbation); it returns the *per-image table* (:mod:`deepfake_toolkit.per_image`), everything
   a report needs, with each model's own operating point recorded.
3. :func:`~deepfake_toolkit.operating_points.fit_operating_points` picks a threshold (and
   optionally a score calibration) per model on one labelled set;
   :func:`resolve_operating_points` decides where, and saved operating points carry them to
   another set.
4. :func:`evaluate_table` turns a per-image table into an :class:`Evaluation`: metric tables per
   model and subset, reliability data, robustness and the confound check
   (:mod:`deepfake_toolkit.confounds`); :meth:`Evaluation.write` writes the report
   (:mod:`deepfake_toolkit.report`).

:func:`evaluate_directory` runs all four. Fake is the positive class throughout; scores are
``fake_score`` = P(fake).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import pandas as pd

from .calibration import CalibrationMethod
from .confounds import CONFOUND_WARN_AT, ConfoundWarning, confound_check, confound_messages, \
    file_facts
from .images import path_text
from .labels import ALL_IMAGES, FAKE, REAL, LabelsArg, check_label_table, \
    label_files, subset_views
from .metrics import binary_metrics, reliability_bins
from .operating_points import (
    DEFAULT_THRESHOLD,
    OperatingPoint,
    ThresholdRule,
    apply_operating_points,
    default_operating_points,
    fit_operating_points,
    load_operating_points,
    model_operating_points,
    operating_points_from_table,
)
from .per_image import clean_scored, evaluated_scores, read_per_image
from .perturbations import CLEAN, ROBUSTNESS_SUITE, Perturbation, perturbation_name
from .report import write_report

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from .pipeline import ModelArg

__all__ = [
    "Evaluation", "evaluate_directory", "evaluate_table", "metrics_table",
    "reliability_table", "resolve_operating_points", "robustness_table", "score_labelled",
]


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

    Each named model is loaded once (see :func:`~deepfake_toolkit.pipeline.load_detectors`) and scores every condition.

    Args:
        labelled: A table from :func:`~deepfake_toolkit.labels.label_files` (path, true_label,
            subset).
        model: A registry name, a loaded detector, or a list of them.
        face_crop: Score face crops (True) or whole images (False); None: as each model's own
            policy says (``detector.scoring``).
        perturbations: Robustness conditions, each applied to every image of both classes after
            decoding and before face detection (e.g.
            :data:`~deepfake_toolkit.perturbations.ROBUSTNESS_SUITE`).
        threshold: A threshold of the user's, recorded as every model's operating point; None
            records each model's own (see
            :func:`~deepfake_toolkit.operating_points.default_operating_points`).
        **classify_options: Passed to :func:`~deepfake_toolkit.pipeline.classify_files`
            (no_face, batch_size, device, num_workers, weights_dir, progress, provenance, ...);
            ``stability=True`` checks the unperturbed images only.

    Returns:
        The per-image table: :data:`~deepfake_toolkit.per_image.PER_IMAGE_COLUMNS`, one row per
        image, model and perturbation, with each model's default operating point filled in.
    """
    from .pipeline import classify_files, load_detectors

    if "output_csv" in classify_options:
        raise ValueError("score_labelled writes no CSV itself: save its table with "
                         "write_per_image")
    labelled = check_label_table(labelled)
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
    truth = labelled.assign(path=[path_text(p) for p in labelled["path"]])
    facts = file_facts(truth["path"])
    table = scored.merge(truth, on="path", how="left").merge(facts, on="path", how="left")
    return apply_operating_points(table, default_operating_points(detectors, threshold))


def metrics_table(per_image: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0,
                  n_bins: int = 10) -> pd.DataFrame:
    """Metrics per model and subset on the unperturbed images.

    Each model's verdicts use the threshold and calibration recorded in the table (see
    :func:`~deepfake_toolkit.operating_points.apply_operating_points`). Unscored images
    (unreadable, or skipped for having no face) are left out and counted in ``n_unscored``.

    Returns:
        One row per (model, subset): model, subset, other_class_from_all, n_unscored and the
        keys of :func:`~deepfake_toolkit.metrics.binary_metrics`.
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
    """Reliability bins (see :func:`~deepfake_toolkit.metrics.reliability_bins`) per model on
    the unperturbed images."""
    frames = []
    for model, rows in clean_scored(per_image).groupby("model", sort=False):
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


@dataclass
class Evaluation:
    """Everything an evaluation found, as tables; :meth:`figures` and :meth:`write` present it.

    Attributes:
        per_image: The per-image table (:data:`~deepfake_toolkit.per_image.PER_IMAGE_COLUMNS`).
        metrics: :func:`metrics_table`.
        reliability: :func:`reliability_table`.
        robustness: :func:`robustness_table` (empty without perturbations).
        confounds: :func:`~deepfake_toolkit.confounds.confound_check`.
        operating_points: Model name -> the
            :class:`~deepfake_toolkit.operating_points.OperatingPoint` of its verdicts.
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

        clean = clean_scored(self.per_image).assign(score=lambda t: evaluated_scores(t))
        figures = {
            "roc": plots.roc_figure(clean, score_column="score"),
            "pr": plots.pr_figure(clean, score_column="score"),
            "histogram": plots.score_histogram(clean, score_column="score", normalise=True,
                                               title="Score distributions per class"),
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
    """Evaluate a per-image table (from :func:`score_labelled` or
    :func:`~deepfake_toolkit.per_image.read_per_image`).

    Args:
        per_image: The per-image table.
        operating_points: Thresholds and calibrations to apply (see
            :func:`~deepfake_toolkit.operating_points.fit_operating_points`,
            :func:`~deepfake_toolkit.operating_points.load_operating_points`); None keeps those
            recorded in the table.
        n_bootstrap: Resamples for the 95% intervals (0 turns them off).
        seed: Seed of the bootstrap.
        n_bins: Bins of the reliability data and the ECE.
        confound_warn_at: See :func:`~deepfake_toolkit.confounds.confound_check`.
        notes: Extra caveats to carry into the report.
        settings: How the evaluation was run, recorded in the report.

    Returns:
        An :class:`Evaluation`. Confounds also raise a
        :class:`~deepfake_toolkit.confounds.ConfoundWarning`.
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
        labels: How true labels are found (see :func:`~deepfake_toolkit.labels.label_files`).
        face_crop: Score face crops (True) or whole images (False); None: as each model's own
            policy says.
        robustness: True for :data:`~deepfake_toolkit.perturbations.ROBUSTNESS_SUITE`, or a
            list of perturbations.
        operating_points: Saved thresholds/calibrations to apply (a mapping or a JSON path from
            :func:`~deepfake_toolkit.operating_points.save_operating_points`); excludes fitting
            new ones.
        tune_on: Where thresholds and calibrations are fitted: a labelled folder (scored with the
            same models and options), a per-image CSV, or a per-image table. None fits them on
            ``root`` itself, which flatters the verdict metrics (a note says so).
        tune_labels: How ``tune_on``'s labels are found (default: as ``labels`` for "folder" and
            "prefix", else "folder").
        threshold_rule: "fixed", "balanced_accuracy" or "fpr" (see
            :func:`~deepfake_toolkit.operating_points.fit_operating_points`).
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
    from .pipeline import load_detectors  # imported here: the pipeline brings torch

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
        threshold_rule, threshold, target_fpr, calibration: See
            :func:`~deepfake_toolkit.operating_points.fit_operating_points`; rule "fixed" without
            a threshold keeps the models' own operating points recorded in ``per_image``.
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
