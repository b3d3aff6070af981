"""Operating points: how each model's fake scores become verdicts in an evaluation.

An :class:`OperatingPoint` is an optional :class:`~deepfake_toolkit.calibration.ScoreCalibration`
and then a threshold, with where the threshold came from: the loaded model's own operating
threshold, the user's, or one fitted on labelled images. Fitted on one labelled set
(:func:`fit_operating_points`), it is saved to JSON (:func:`save_operating_points`) and applied to
another (:func:`apply_operating_points`), so a threshold is never tuned on the images it is
judged on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from .calibration import CalibrationMethod, ScoreCalibration, choose_threshold
from .labels import FAKE
from .metrics import two_classes
from .per_image import (
    NUMERIC_EVALUATION_COLUMNS,
    PER_IMAGE_COLUMNS,
    TEXT_EVALUATION_COLUMNS,
    clean_scored,
)
from .perturbations import CLEAN
from .results import Threshold

if TYPE_CHECKING:
    from .models import Detector

__all__ = [
    "DEFAULT_THRESHOLD", "THRESHOLD_RULES", "UNFITTED_RULES", "OperatingPoint", "RecordedRule",
    "ThresholdRule", "apply_operating_points", "default_operating_points",
    "fit_operating_points", "load_operating_points", "model_operating_points",
    "operating_points_from_table", "save_operating_points",
]

ThresholdRule = Literal["fixed", "balanced_accuracy", "fpr"]
THRESHOLD_RULES: tuple[str, ...] = ("fixed", "balanced_accuracy", "fpr")
"""How a threshold is chosen for an evaluation: "fixed" fits none (the user's threshold, else the
model's own), the others fit one on labelled scores."""
RecordedRule = Literal["model", "user", "fixed", "balanced_accuracy", "fpr"]
UNFITTED_RULES: tuple[str, ...] = ("model", "user", "fixed")
"""Recorded rules of thresholds that were not fitted: "model" (the loaded model's own operating
threshold, recorded with its weights), "user" (given by the user), "fixed" (0.5, for a model
without an operating threshold)."""
DEFAULT_THRESHOLD = 0.5
"""Threshold of a model that has no operating threshold of its own."""


@dataclass(frozen=True)
class OperatingPoint:
    """How one model's scores are turned into verdicts: an optional calibration, then a threshold.

    Attributes:
        model: Model name.
        threshold: Verdict "fake" when the (calibrated) score is >= this.
        rule: Where the threshold came from: "model" (the model's own operating threshold),
            "user" (the user's), "fixed" (0.5, the model has none), "balanced_accuracy" or "fpr"
            (fitted on labelled images).
        target_fpr: The false-positive rate aimed at (rule "fpr").
        calibration: Score calibration applied before the threshold, or None.
        fitted_on: Which labelled images the threshold and calibration were fitted on.
        n_real: Real images they were fitted on.
        n_fake: Fake images they were fitted on.
    """

    model: str
    threshold: float = DEFAULT_THRESHOLD
    rule: RecordedRule = "fixed"
    target_fpr: float | None = None
    calibration: ScoreCalibration | None = None
    fitted_on: str = ""
    n_real: int = 0
    n_fake: int = 0

    def scores(self, fake_scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """The scores the threshold applies to (calibrated when there is a calibration)."""
        raw = np.asarray(fake_scores, dtype=float)
        return self.calibration(raw) if self.calibration else raw

    def describe(self) -> str:
        """The rule in words, e.g. "FPR <= 5% (0.612)"."""
        if self.rule == "fpr":
            text = f"FPR <= {self.target_fpr:.1%} ({self.threshold:.3f})"
        elif self.rule == "balanced_accuracy":
            text = f"max balanced accuracy ({self.threshold:.3f})"
        elif self.rule == "model":
            text = f"model's own {self.threshold:.3f}"
        elif self.rule == "user":
            text = f"user {self.threshold:.3f}"
        else:
            text = f"fixed {self.threshold:.3f}"
        if self.calibration:
            text += f", {self.calibration.method} scaling"
        return text

    @property
    def label_rule(self) -> str:
        """The verdict rule as a result table's ``label_rule`` column words it, e.g. "threshold
        0.5291 (model)"."""
        source = f"{self.rule}, {self.calibration.method} scaling" if self.calibration \
            else self.rule
        return f"threshold {self.threshold:g} ({source})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calibration"] = self.calibration.to_dict() if self.calibration else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatingPoint:
        calibration = data.get("calibration")
        target = data.get("target_fpr")
        return cls(model=str(data["model"]), threshold=float(data["threshold"]),
                   rule=data.get("rule", "fixed"),
                   target_fpr=None if target is None else float(target),
                   calibration=ScoreCalibration.from_dict(calibration) if calibration else None,
                   fitted_on=str(data.get("fitted_on", "")), n_real=int(data.get("n_real", 0)),
                   n_fake=int(data.get("n_fake", 0)))


def save_operating_points(points: Mapping[str, OperatingPoint],
                          path: str | os.PathLike[str]) -> Path:
    """Write operating points (thresholds and calibrations) to JSON for another evaluation."""
    from . import __version__

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"deepfake_toolkit_version": __version__,
                "models": {name: point.to_dict() for name, point in points.items()}}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


def load_operating_points(path: str | os.PathLike[str]) -> dict[str, OperatingPoint]:
    """Read operating points written by :func:`save_operating_points`.

    Raises:
        ValueError: The file is not an operating-points JSON.
    """
    path = Path(path).expanduser()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return {name: OperatingPoint.from_dict(data) for name, data in document["models"].items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not an operating-points file written by deepfake-toolkit "
                         f"evaluate ({type(exc).__name__}: {exc})") from None


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
        per_image: A per-image table (:func:`~deepfake_toolkit.evaluate.score_labelled`) of the
            tuning images.
        rule: "balanced_accuracy" (maximise it), "fpr" (highest TPR at FPR <= ``target_fpr``) or
            "fixed" (no fitted threshold: ``threshold``, else the model's own, else 0.5).
        target_fpr: False-positive rate for rule "fpr".
        threshold: The user's threshold for rule "fixed".
        calibration: None, "temperature" or "platt".
        fitted_on: Where the images came from, recorded with each operating point.
        defaults: Each model's own operating point, kept by rule "fixed" without a
            ``threshold`` (see :func:`default_operating_points`); None takes those recorded in
            ``per_image`` by :func:`~deepfake_toolkit.evaluate.score_labelled`.

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
    for model, rows in clean_scored(per_image).groupby("model", sort=False):
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
    for column in NUMERIC_EVALUATION_COLUMNS:
        if column not in table:
            table[column] = np.nan
    for column in TEXT_EVALUATION_COLUMNS:
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
