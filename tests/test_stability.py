"""Stability check: a verdict that flips under mild re-encoding becomes "uncertain"."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from deepfake_toolkit import classify_files, read_csv
from deepfake_toolkit.perturbations import Downscale, JpegCompression
from deepfake_toolkit.stability import STABILITY_SUITE, apply_variants

from .toy_models import DetailScore, toy_detector


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stability")
    rng = np.random.default_rng(0)
    noise = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(folder / "noisy.png")
    Image.new("RGB", (64, 64), (90, 120, 150)).save(folder / "flat.png")
    return folder


@pytest.fixture(scope="module")
def jpeg_sensitive(images):
    """A toy model calling the noisy image fake as it is and real after JPEG quality 75."""
    probe = toy_detector(DetailScore(), "probe")
    noisy = Image.open(images / "noisy.png").convert("RGB")
    as_is = probe.module.detail(probe.transform(noisy)[None]).item()
    at_75 = probe.module.detail(probe.transform(JpegCompression(75)(noisy))[None]).item()
    assert abs(at_75 - as_is) > 0.01  # JPEG changes the fine detail of noise
    # Fake as it is, real at quality 75, whichever way JPEG moves the detail.
    scale = 200.0 if as_is > at_75 else -200.0
    return toy_detector(DetailScore(offset=(as_is + at_75) / 2, scale=scale), "detail")


def test_flipping_verdict_becomes_uncertain(images, jpeg_sensitive, tmp_path):
    files = [images / "noisy.png", images / "flat.png"]
    out = tmp_path / "scores.csv"
    frame = classify_files(files, jpeg_sensitive, face_crop=False, progress=False,
                           stability=True, output_csv=out).set_index("path")
    plain = classify_files(files, jpeg_sensitive, face_crop=False, progress=False,
                           provenance=False).set_index("path")
    noisy, flat = frame.loc[str(files[0])], frame.loc[str(files[1])]
    assert plain.loc[str(files[0]), "label"] == "fake"
    assert noisy["label"] == "uncertain"
    assert "jpeg_q75" in noisy["stability_reason"] and "as is" in noisy["stability_reason"]
    assert noisy["fake_score"] == pytest.approx(plain.loc[str(files[0]), "fake_score"])

    # The recorded scores are those of the re-encoded images scored directly.
    source = Image.open(files[0]).convert("RGB")
    direct = {p.name: jpeg_sensitive.predict_images([p(source).convert("RGB")])[0]
              for p in STABILITY_SUITE}
    recorded = dict(part.split("=") for part in noisy["stability_scores"].split("; "))
    assert set(recorded) == set(direct)
    for name, score in direct.items():
        assert float(recorded[name]) == pytest.approx(score, abs=1e-4)
    every = [noisy["fake_score"], *direct.values()]
    assert noisy["stability_spread"] == pytest.approx(max(every) - min(every), abs=1e-6)

    assert flat["label"] == plain.loc[str(files[1]), "label"] != "uncertain"
    assert flat["stability_reason"] == ""
    assert flat["stability_spread"] < 1e-3

    back = read_csv(out).set_index("path")
    assert back.loc[str(files[0]), "label"] == "uncertain"
    assert back.loc[str(files[0]), "stability_spread"] == pytest.approx(
        noisy["stability_spread"])
    assert back.loc[str(files[1]), "stability_reason"] == ""


def test_without_stability_the_columns_stay_empty(images, jpeg_sensitive):
    frame = classify_files([images / "noisy.png"], jpeg_sensitive, face_crop=False,
                           progress=False)
    assert math.isnan(frame["stability_spread"][0]) and frame["stability_scores"][0] == ""
    assert frame["label"][0] == "fake"


def test_bands_need_an_opposite_verdict_to_flip():
    import pandas as pd

    frame = pd.DataFrame({"path": ["a", "b"], "model": ["m", "m"], "fake_score": [0.65, 0.85],
                          "label": ["weakly fake", "likely fake"]})
    variants = [("jpeg_q90", {("a", "m"): (0.55, "uncertain"), ("b", "m"): (0.3, "weakly real")})]
    out = apply_variants(frame, variants)
    assert out["label"].tolist() == ["weakly fake", "uncertain"]
    assert out["stability_spread"].tolist() == pytest.approx([0.10, 0.55])
    assert out["stability_reason"][0] == ""


def test_stability_and_perturb_are_exclusive(images, jpeg_sensitive):
    with pytest.raises(ValueError, match="stability"):
        classify_files([images / "flat.png"], jpeg_sensitive, face_crop=False, progress=False,
                       stability=True, perturb=Downscale(0.5))


def test_relabel_with_a_new_threshold_judges_again():
    import pandas as pd

    from deepfake_toolkit.results import Threshold
    from deepfake_toolkit.stability import relabel

    frame = pd.DataFrame({"fake_score": [0.62, 0.3, float("nan")],
                          "label": ["fake", "real", "error"],
                          "stability_scores": ["jpeg_q90=0.5800; downscale_0.75=none",
                                               "", ""],
                          "stability_reason": ["", "", ""]})
    strict = relabel(frame, Threshold(0.6))
    assert strict["label"].tolist() == ["uncertain", "real", "error"]
    assert "jpeg_q90 0.580 (real)" in strict["stability_reason"][0]
    loose = relabel(strict, Threshold(0.5))
    assert loose["label"].tolist() == ["fake", "real", "error"]
    assert loose["stability_reason"].tolist() == ["", "", ""]
