"""Stability check: does a verdict survive the mild re-encodings every shared image goes through?

Detector scores are known to move under re-compression and resizing (users report a real photo
ranging 0.60-0.89 by codec and scale). :func:`check_stability` re-scores each image under
:data:`STABILITY_SUITE` (JPEG quality 90 and 75, downscale to 0.75), records the spread of the
scores, and labels an image ``uncertain`` when its verdict flips between fake and real, with the
reason in ``stability_reason``. A stable verdict is not a correct one: it only means these
re-encodings do not change it.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from .models import Detector
from .perturbations import Downscale, JpegCompression, Perturbation
from .results import FAKE_LABELS
from .scoring import Scoring

STABILITY_SUITE: tuple[Perturbation, ...] = (
    JpegCompression(90),
    JpegCompression(75),
    Downscale(0.75),
)
"""The re-encodings of the stability check: mild, and common on the way through the web."""

REAL_LABELS = frozenset({"real", "likely real", "weakly real"})
"""Labels that count as a real verdict (the "uncertain" band counts as neither)."""

UNCERTAIN = "uncertain"


def verdict(label: str) -> str | None:
    """"fake", "real", or None for a label that is neither (uncertain band, no face, error)."""
    if label in FAKE_LABELS:
        return "fake"
    if label in REAL_LABELS:
        return "real"
    return None


def check_stability(
    frame: pd.DataFrame,
    paths: Sequence[str | os.PathLike[str]],
    detectors: Sequence[Detector],
    policies: Sequence[Scoring] | None = None,
    *,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    num_workers: int | None = None,
    max_pixels: int | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    suite: Sequence[Perturbation] = STABILITY_SUITE,
) -> pd.DataFrame:
    """Re-score ``paths`` under each re-encoding of ``suite`` and fill the stability columns.

    Each re-encoded image goes through the same pipeline as the original (face detection
    included) with the same models, region and label rules.

    Args:
        frame: The result table of ``paths`` scored as they are.
        paths: The files of ``frame``.
        detectors: The loaded models that scored ``frame``.
        policies: The scoring policy each detector scored ``frame`` with (None: each model's
            own, ``detector.scoring``).
        batch_size, device, num_workers, max_pixels, progress, stop: As for
            :func:`~deepfake_toolkit.pipeline.classify_files`.
        suite: The re-encodings.

    Returns:
        ``frame`` with ``stability_spread``, ``stability_scores`` and ``stability_reason`` filled,
        and ``label`` set to "uncertain" where the verdict flips.
    """
    from .pipeline import classify_files

    run = (policies or [d.scoring for d in detectors])[0]
    # The same overrides give every model the policy it scored ``frame`` with.
    options: dict[str, Any] = dict(
        model=list(detectors), face_crop=run.face_crop, face_config=run.face,
        no_face=run.no_face, threshold=run.user_threshold, bands=run.bands,
        batch_size=batch_size, device=device,
        num_workers=num_workers, progress=progress, stop=stop, provenance=False, stability=False)
    if max_pixels is not None:
        options["max_pixels"] = max_pixels
    variants: list[tuple[str, dict[tuple[str, str], tuple[float, str]]]] = []
    for perturbation in suite:
        if stop is not None and stop.is_set():
            break
        scored = classify_files([Path(p) for p in paths], perturb=perturbation, **options)
        variants.append((perturbation.name, {
            (row.path, row.model): (row.fake_score, row.label)
            for row in scored[["path", "model", "fake_score", "label"]].itertuples()}))
    return apply_variants(frame, variants)


def judge(seen: Sequence[tuple[str, float, str]]) -> tuple[str, str]:
    """The label and stability reason of an image from its (condition, score, label) triples,
    the unchanged image first: "uncertain" with the scores when fake and real verdicts mix,
    else the unchanged image's label and ""."""
    verdicts = {verdict(label) for _, _, label in seen} - {None}
    if len(verdicts) < 2:
        return seen[0][2], ""
    return UNCERTAIN, "verdict flips under re-encoding: " + ", ".join(
        f"{name} {score:.3f} ({label})" for name, score, label in seen)


def relabel(frame: pd.DataFrame, scheme: Callable[[float], str]) -> pd.DataFrame:
    """Label the scored rows of ``frame`` again with ``scheme`` (e.g. a new threshold), judging
    stability again from the recorded ``stability_scores`` where the check ran."""
    out = frame.copy()
    labels, reasons = out["label"].tolist(), out["stability_reason"].tolist()
    for position, row in enumerate(out[["fake_score", "stability_scores"]].itertuples()):
        if row.fake_score is None or math.isnan(row.fake_score):
            continue
        seen = [("as is", row.fake_score, scheme(row.fake_score))]
        for part in (row.stability_scores or "").split("; "):
            name, _, value = part.partition("=")
            if value and value != "none":
                seen.append((name, float(value), scheme(float(value))))
        labels[position], reasons[position] = judge(seen)
    out["label"] = pd.Series(labels, index=out.index, dtype=object)
    out["stability_reason"] = pd.Series(reasons, index=out.index, dtype=object)
    return out


def apply_variants(frame: pd.DataFrame,
                   variants: Sequence[tuple[str, dict[tuple[str, str], tuple[float, str]]]]
                   ) -> pd.DataFrame:
    """Fill the stability columns of ``frame`` from the variants' (score, label) per row.

    Args:
        frame: The result table as scored.
        variants: For each re-encoding, its name and the (fake_score, label) of every
            (path, model) it scored.

    Returns:
        A copy of ``frame`` with the stability columns filled and flipped verdicts labelled
        "uncertain".
    """
    out = frame.copy()
    spreads, texts, reasons, labels = [], [], [], []
    for row in out[["path", "model", "fake_score", "label"]].itertuples():
        if row.fake_score is None or math.isnan(row.fake_score) or not variants:
            spreads.append(math.nan)
            texts.append("")
            reasons.append("")
            labels.append(row.label)
            continue
        scores = [row.fake_score]
        seen = [("as is", row.fake_score, row.label)]
        parts = []
        for name, results in variants:
            score, label = results.get((row.path, row.model), (math.nan, ""))
            if score is None or math.isnan(score):
                parts.append(f"{name}=none")
                continue
            scores.append(score)
            seen.append((name, score, label))
            parts.append(f"{name}={score:.4f}")
        label, reason = judge(seen)
        spreads.append(max(scores) - min(scores))
        texts.append("; ".join(parts))
        reasons.append(reason)
        labels.append(label)
    out["stability_spread"] = pd.Series(spreads, index=out.index, dtype="float64")
    out["stability_scores"] = pd.Series(texts, index=out.index, dtype=object)
    out["stability_reason"] = pd.Series(reasons, index=out.index, dtype=object)
    out["label"] = pd.Series(labels, index=out.index, dtype=object)
    return out
