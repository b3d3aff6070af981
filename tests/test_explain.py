"""Heatmaps: shape and range on every model family, and a map that follows the evidence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_toolkit.explain import explain_files, explain_image, gradcam
from deepfake_toolkit.models import HeatmapLayer, get_spec
from deepfake_toolkit.models.loading import Detector
from deepfake_toolkit.results import read_csv

from .toy_models import BrightPatchScore, toy_detector

pytest.importorskip("captum", reason="captum (the explain extra) is not installed")


def _patch_image(left: int, top: int, size: int = 96, patch: int = 24) -> Image.Image:
    array = np.full((size, size, 3), 60, dtype=np.uint8)
    array[top:top + patch, left:left + patch] = 255
    return Image.fromarray(array)


@pytest.fixture(scope="module")
def bright_model():
    return toy_detector(BrightPatchScore(), "bright", input_size=64,
                        explain_layers=lambda module: (HeatmapLayer(module.act),))


@pytest.mark.parametrize("left, top", [(8, 8), (64, 12), (30, 60)])
def test_map_follows_the_bright_patch(bright_model, left, top):
    image = _patch_image(left, top)
    with_patch = bright_model.predict_images([image])[0]
    without = bright_model.predict_images([_patch_image(0, 0, patch=0)])[0]
    assert with_patch > without  # the patch is what drives the score
    heat = gradcam(bright_model, image)
    assert heat.shape == (96, 96) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
    assert top - 4 <= peak_row < top + 28 and left - 4 <= peak_col < left + 28
    inside = heat[top:top + 24, left:left + 24].mean()
    assert inside > 4 * np.delete(heat.ravel(), np.ravel_multi_index(
        np.mgrid[top:top + 24, left:left + 24].reshape(2, -1), heat.shape)).mean()


def test_whole_image_overlay_places_the_map_in_the_window(bright_model):
    image = Image.new("RGB", (200, 150), (60, 60, 60))
    explanation = explain_image(image, bright_model, face_crop=False)
    assert explanation.window == (0, 0, 200, 150) and explanation.region == "image"
    assert explanation.heatmap.shape == (150, 200)
    assert explanation.image_overlay(image).size == (200, 150)


def _random_detector(name: str, **build) -> Detector:
    spec = get_spec(name)
    torch.manual_seed(0)
    if build:
        from deepfake_toolkit.models.vit import build_vit

        module = build_vit(**build)
    else:
        module = spec.build()
    return Detector(spec=spec, module=module.eval(), device=torch.device("cpu"),
                    weights_path=None)


@pytest.mark.parametrize("name, build", [
    ("cnn", {}),
    ("bnext_t_dffd", {}),
    ("vit_dima806", {"depth": 1}),
])
def test_every_family_gives_a_crop_sized_map(name, build):
    detector = _random_detector(name, **build)
    crop = Image.fromarray((np.random.default_rng(1).random((120, 100, 3)) * 255)
                           .astype(np.uint8))
    heat = gradcam(detector, crop)
    assert heat.shape == (120, 100)
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    if get_spec(name).preprocess.resize == "shorter":
        # BNext sees the centre square only: the rows above and below it get no heat.
        assert heat[:9].max() == 0.0 and heat[-9:].max() == 0.0


def test_a_fused_models_map_adds_up_its_branches():
    """The fusion's map is Grad-CAM of the fused logit at both branches' layers, per pixel,
    summed: with the probe's stacking weight at zero it is the CNN's own map (cnn's spec on the
    same crop), with the CNN's at zero the probe's own map (clip_probe's spec), and
    with both weighted, the sum of each branch's own evidence times its weight."""
    from deepfake_toolkit.explain import evidence_map
    from deepfake_toolkit.models.clip import ClipTowerConfig
    from deepfake_toolkit.models.fusion import FusedDetector

    torch.manual_seed(0)
    module = FusedDetector(("embeds",), ClipTowerConfig(width=32, layers=2, heads=2,
                                                        mlp_width=64, embed_dim=16)).eval()
    with torch.no_grad():
        for parameter in module.probe.tower.parameters():
            parameter.normal_(0, 0.2)
    crop = Image.fromarray((np.random.default_rng(2).random((120, 100, 3)) * 255)
                           .astype(np.uint8))

    def detector(name: str, part: torch.nn.Module) -> Detector:
        return Detector(spec=get_spec(name), module=part, device=torch.device("cpu"),
                        weights_path=None)

    def fused(weights: list[float]) -> Detector:
        module.stack_weight.copy_(torch.tensor(weights))
        return detector("cnn_clip_fusion", module)

    cnn, probe = detector("cnn", module.cnn), detector("clip_probe", module.probe)
    np.testing.assert_allclose(gradcam(fused([1.5, 0.0]), crop), gradcam(cnn, crop), atol=1e-4)
    np.testing.assert_allclose(gradcam(fused([0.0, 0.7]), crop), gradcam(probe, crop), atol=1e-4)
    cnn_map, probe_map = evidence_map(cnn, crop), evidence_map(probe, crop)
    assert cnn_map.max() > 0 and probe_map.max() > 0
    both = evidence_map(fused([0.3, 2.0]), crop)
    np.testing.assert_allclose(both, 0.3 * cnn_map + 2.0 * probe_map,
                               rtol=1e-4, atol=1e-5 * both.max())


def test_explain_files_writes_overlays_and_a_table(bright_model, astronaut, tmp_path):
    astronaut.save(tmp_path / "face.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "heatmaps"
    table = explain_files([tmp_path / "face.png", tmp_path / "broken.jpg"], bright_model, out)
    face, broken = table.iloc[0], table.iloc[1]
    assert face["region"] == "face" and broken["error"]
    assert Image.open(face["crop_file"]).size == (face["window"][2] - face["window"][0],
                                                  face["window"][3] - face["window"][1])
    assert Image.open(face["image_file"]).size == astronaut.size
    assert face["fake_score"] == pytest.approx(bright_model.predict_images(
        [astronaut.crop(face["window"])])[0], abs=1e-6)
    assert read_csv(out / "explain.csv")["crop_file"].tolist()[0] == face["crop_file"]


def test_cli_explain(tmp_path, random_cnn_weights, astronaut, capsys):
    from deepfake_toolkit.cli import main

    astronaut.save(tmp_path / "face.jpg")
    out = tmp_path / "heatmaps"
    assert main(["explain", str(tmp_path), "-o", str(out)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["explain", "-o", str(out), "--top", "1"]) == 2
    assert "--scores" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "face.jpg"), "-o", str(out), "-m", "cnn",
                 "--weights-dir", str(random_cnn_weights)]) == 0
    assert "wrote 1 heatmaps" in capsys.readouterr().out
    table = read_csv(out / "explain.csv")
    assert table["model"].tolist() == ["cnn"] and table["region"].tolist() == ["face"]
    assert Image.open(table["image_file"][0]).size == astronaut.size


def test_top_n_comes_from_the_scores_of_the_model_asked_for(tmp_path):
    import argparse

    from deepfake_toolkit.cli import _explain_files
    from deepfake_toolkit.results import results_frame, write_csv

    rows = [{"path": str(tmp_path / f"{name}.jpg"), "model": model, "fake_score": score,
             "label": "", "face_crop": False, "face_found": False, "error": ""}
            for name, model, score in [("a", "default", 0.2), ("b", "default", 0.9),
                                       ("c", "default", 0.5), ("d", "other", 0.99),
                                       ("e", "default", float("nan"))]]
    write_csv(results_frame(rows), tmp_path / "scores.csv")
    args = argparse.Namespace(files=[], top=2, scores=str(tmp_path / "scores.csv"))
    assert [p.name for p in _explain_files(args, ["default"])] == ["b.jpg", "c.jpg"]
