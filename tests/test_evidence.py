"""Evidence summaries per class: provenance shares per file, stability per file and model."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from deepfake_toolkit.evidence import EVIDENCE_SUMMARY_COLUMNS, evidence_summary
from deepfake_toolkit.provenance import empty_provenance


def _row(path, model, true_label, perturbation="none", spread=math.nan, reason="", **cells):
    provenance = {**empty_provenance(), "c2pa_status": "none", "provenance_says_ai": False,
                  **cells}
    return {"path": path, "model": model, "fake_score": 0.5, "label": "real", "error": "",
            "face_crop": False, "face_found": False, "stability_spread": spread,
            "stability_reason": reason, **provenance, "true_label": true_label,
            "perturbation": perturbation}


def test_shares_per_class_and_model():
    rows = [
        _row("f1", "a", "fake", c2pa_status="untrusted", c2pa_source_type="trainedAlgorithmicMedia",
             provenance_says_ai=True, spread=0.3, reason="verdict flips"),
        _row("f2", "a", "fake", generator="ComfyUI", provenance_says_ai=True, spread=0.1),
        _row("f3", "a", "fake", c2pa_status="invalid", c2pa_source_type="digitalCapture",
             spread=0.2),
        _row("f4", "a", "fake", c2pa_status="", provenance_says_ai=None),  # not checked
        _row("r1", "a", "real", exif_make="Canon", spread=0.05),
        _row("r1", "a", "real", perturbation="jpeg_q50", exif_make="Canon"),  # left out
        _row("r1", "b", "real", exif_make="Canon"),
    ]
    summary = evidence_summary(pd.DataFrame(rows)).set_index(["model", "group"])
    assert list(summary.reset_index().columns) == list(EVIDENCE_SUMMARY_COLUMNS)
    fake = summary.loc[("a", "fake")]
    assert fake["files"] == 4 and fake["provenance_checked"] == 3
    assert fake["c2pa_manifest"] == pytest.approx(2 / 3)
    assert fake["c2pa_says_ai"] == pytest.approx(1 / 3)
    assert fake["c2pa_invalid"] == pytest.approx(1 / 3)
    assert fake["says_ai"] == pytest.approx(2 / 3)
    assert fake["generator_metadata"] == pytest.approx(1 / 3)
    assert fake["stability_checked"] == 3
    assert fake["verdict_flipped"] == pytest.approx(1 / 3)
    assert fake["median_spread"] == pytest.approx(0.2)
    real = summary.loc[("a", "real")]
    assert real["files"] == 1 and real["camera_exif"] == 1.0 and real["says_ai"] == 0.0
    assert summary.loc[("b", "real"), "stability_checked"] == 0


def test_nothing_to_summarise():
    empty = evidence_summary(pd.DataFrame({"path": ["x"], "model": ["m"]}))
    assert empty.empty and list(empty.columns) == list(EVIDENCE_SUMMARY_COLUMNS)
