"""Operating points: score calibration (temperature or Platt scaling) and threshold choice.

An :class:`OperatingPoint` says how one model's fake scores become verdicts: an optional
:class:`ScoreCalibration`, then a threshold. Fitted on one labelled set, it is saved to JSON and
applied to another, so the threshold is never tuned on the images it is judged on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from .metrics import two_classes

ThresholdRule = Literal["fixed", "balanced_accuracy", "fpr"]
CalibrationMethod = Literal["temperature", "platt"]
THRESHOLD_RULES: tuple[str, ...] = ("fixed", "balanced_accuracy", "fpr")
"""How a threshold is chosen for an evaluation: "fixed" fits none (the user's threshold, else the
model's own), the others fit one on labelled scores."""
RecordedRule = Literal["model", "user", "fixed", "balanced_accuracy", "fpr"]
UNFITTED_RULES: tuple[str, ...] = ("model", "user", "fixed")
"""Recorded rules of thresholds that were not fitted: "model" (the loaded model's own operating
threshold, recorded with its weights), "user" (given by the user), "fixed" (0.5, for a model
without an operating threshold)."""
CALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt")
DEFAULT_THRESHOLD = 0.5
"""Threshold of a model that has no operating threshold of its own."""
_SCORE_EPS = 1e-7


def _logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, dtype=float), _SCORE_EPS, 1 - _SCORE_EPS)
    return np.log(clipped) - np.log1p(-clipped)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * values))


@dataclass(frozen=True)
class ScoreCalibration:
    """A monotone map of fake scores onto calibrated probabilities: sigmoid(slope * logit(s) +
    intercept).

    Temperature scaling fixes ``intercept`` at 0 (``slope`` = 1 / temperature); Platt scaling
    fits both. Neither changes the order of scores (so not the AUC) while the slope is positive.

    Attributes:
        method: "temperature" or "platt".
        slope: Multiplier of the score's logit.
        intercept: Added to the scaled logit.
    """

    method: CalibrationMethod
    slope: float
    intercept: float = 0.0

    @property
    def temperature(self) -> float:
        """1 / slope: above 1 the model was over-confident, below 1 under-confident."""
        return 1.0 / self.slope if self.slope else math.inf

    def __call__(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated fake scores (NaN stays NaN)."""
        return _sigmoid(self.slope * _logit(np.asarray(scores, dtype=float)) + self.intercept)

    @classmethod
    def fit(cls, y_true: Sequence[int], scores: Sequence[float],
            method: CalibrationMethod = "temperature") -> ScoreCalibration:
        """Fit by minimising the log-loss of the calibrated scores.

        Args:
            y_true: 1 for fake, 0 for real.
            scores: fake scores of the same images (no missing values).
            method: "temperature" (one parameter, the safer choice on small sets) or "platt"
                (slope and intercept; also corrects a bias towards one class).
        """
        from scipy.optimize import minimize

        if method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}, not {method!r}")
        y_true = np.asarray(y_true, dtype=float)
        if not two_classes(y_true.astype(int)):
            raise ValueError("calibration needs real and fake images")
        logits = _logit(np.asarray(scores, dtype=float))

        def log_loss(params: np.ndarray) -> float:
            slope = math.exp(params[0]) if method == "temperature" else params[0]
            intercept = params[1] if method == "platt" else 0.0
            z = slope * logits + intercept
            # log(1 + exp(z)) - y z, written to stay finite for large |z|.
            return float(np.mean(np.logaddexp(0.0, z) - y_true * z))

        start = np.zeros(1) if method == "temperature" else np.array([1.0, 0.0])
        best = minimize(log_loss, start, method="BFGS")
        if method == "temperature":
            return cls(method, float(math.exp(best.x[0])), 0.0)
        return cls(method, float(best.x[0]), float(best.x[1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreCalibration:
        method = data.get("method")
        if method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, float(data["slope"]), float(data.get("intercept", 0.0)))


def choose_threshold(y_true: Sequence[int], scores: Sequence[float],
                     target_fpr: float | None = None) -> float:
    """Pick a threshold on labelled scores.

    Args:
        y_true: 1 for fake, 0 for real.
        scores: fake scores.
        target_fpr: None to maximise balanced accuracy (Youden's J); else the threshold with the
            highest true-positive rate whose false-positive rate is at most this.

    Returns:
        A threshold half-way between the chosen operating point's lowest fake-labelled score and
        the next lower score, so the labels of these images are those of the operating point
        while the margin to the next image is split evenly.

    Raises:
        ValueError: A class is missing.
    """
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=int)
    if not two_classes(y_true):
        raise ValueError("choosing a threshold needs real and fake images")
    fpr, tpr, thresholds = roc_curve(y_true, scores, drop_intermediate=False)
    if target_fpr is None:
        index = int(np.argmax(tpr - fpr))
    else:
        index = int(np.flatnonzero(fpr <= target_fpr + 1e-12)[-1])
    if index == 0:
        return float(min(1.0, np.nextafter(thresholds[1], np.inf)))
    lower = thresholds[index + 1] if index + 1 < len(thresholds) else 0.0
    return float(min(1.0, (thresholds[index] + lower) / 2))


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
