"""scripts/compare_scores.py: the paired comparison of two scorings of the same images, checked
against figures worked out by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_scores.py"


def _scores(scores: list[float], boxes: list[str | float]) -> pd.DataFrame:
    return pd.DataFrame({
        "relative": [f"f/{i}.jpg" for i in range(6)],
        "label": [0, 0, 0, 1, 1, 1],
        "source": ["f"] * 6,
        "fake_score": scores,
        "region": ["face" if isinstance(b, str) else "image" for b in boxes],
        "face_box": boxes,
    })


def test_compare_counts_flips_auc_change_and_box_overlap(tmp_path):
    boxes_a = ["[0.0, 0.0, 10.0, 10.0]"] * 5 + [float("nan")]
    # The second scoring moves image 0's box right by 5 px (IoU 50 / 150 = 1/3) and finds a
    # face in image 5, which had none.
    boxes_b = ["[5.0, 0.0, 15.0, 10.0]"] + ["[0.0, 0.0, 10.0, 10.0]"] * 5
    a = _scores([0.1, 0.2, 0.6, 0.4, 0.8, 0.9], boxes_a)
    # Image 2 (a real) drops below the threshold 0.5, image 3 (a fake) rises above it.
    b = _scores([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], boxes_b)
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a.csv"),
                          str(tmp_path / "b.csv"), "--threshold", "0.5", "--out", str(out),
                          "--bootstrap", "50"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    folder = result["folders"]["f"]
    # A: of the 9 real/fake pairs, only (0.6 real, 0.4 fake) is in the wrong order: AUC 8/9.
    assert folder["auc_a"] == pytest.approx(8 / 9)
    assert folder["auc_b"] == pytest.approx(1.0)
    assert folder["auc_change"] == pytest.approx(1 / 9)
    low, high = folder["auc_change_95"]
    assert low <= 1 / 9 + 1e-9 and high >= 1 / 9 - 1e-9
    assert result["flips"] == folder["flips"] == 2
    assert result["region_changes"] == 1
    assert result["median_abs_change"] == pytest.approx(0.0)
    assert result["box_iou_min"] == pytest.approx(1 / 3)
    assert result["box_iou_median"] == pytest.approx(1.0)
    assert "AUC 0.889 -> 1.000" in run.stdout


def test_compare_refuses_scorings_of_other_images(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from compare_scores import compare

    a = _scores([0.1] * 6, ["[0, 0, 1, 1]"] * 6)
    b = a.assign(relative=a["relative"][::-1].to_numpy())
    with pytest.raises(ValueError, match="same images"):
        compare(a, b, 0.5)
    assert np.isfinite(compare(a, a, 0.5)["box_iou_median"])
