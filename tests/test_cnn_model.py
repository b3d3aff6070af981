"""The shipped CNN (`cnn`, the default model's CNN branch): its weights, spec, model card and
recorded scores agree."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from deepfake_toolkit import classify_files, load_model
from deepfake_toolkit.models import get_spec
from deepfake_toolkit.faces import FaceCropConfig
from deepfake_toolkit.models.loading import recorded_spec
from deepfake_toolkit.models.weights import PROJECT_WEIGHTS

from .conftest import SHARED_DATA, needs_shared_data

SPEC = get_spec("cnn")
WEIGHTS = PROJECT_WEIGHTS / SPEC.weights[0].filename
RECORD = WEIGHTS.with_suffix(".json")
CARD = PROJECT_WEIGHTS / "MODEL_CARD.md"

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"{WEIGHTS} is not shipped here")


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def test_weights_are_small_and_fp16():
    assert WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    from safetensors import safe_open

    with safe_open(str(WEIGHTS), framework="pt") as handle:
        dtypes = {str(handle.get_tensor(k).dtype) for k in handle.keys()}
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes


def test_spec_file_card_and_weights_agree(record):
    in_file = recorded_spec(WEIGHTS)
    assert record["spec"] == in_file
    assert in_file["preprocess"] == SPEC.describe()["preprocess"]
    assert in_file["output"] == SPEC.output == "sigmoid_fake"
    detector = load_model("cnn", device="cpu")
    assert detector.spec.threshold == pytest.approx(in_file["threshold"])
    # The model's scoring policy is the one it was trained and validated with.
    trained_on = FaceCropConfig(**record["training"]["face"])
    assert detector.scoring.face == trained_on
    assert detector.scoring.threshold == pytest.approx(record["threshold"], abs=1e-4)
    assert detector.scoring.rule == f"threshold {in_file['threshold']:g} (model)"
    assert record["threshold"] == pytest.approx(in_file["threshold"], abs=1e-4)
    card = CARD.read_text()
    assert f"**{in_file['threshold']:.4f}**" in card
    overall = record["validation_through_pipeline"]["metrics"]["all"]
    assert f"**{overall['auc']:.3f}**" in card


def test_card_metrics_match_the_record(record):
    card = CARD.read_text()
    metrics = record["validation_through_pipeline"]["metrics"]
    for folder in ("hardfake_tpdne_unsplash", "ffhq_tpdne_roeishc", "dfdc_faces224",
                   "yonsei_rff_160"):
        rows = [line for line in card.splitlines() if line.startswith(f"| {folder}")]
        assert any(re.search(rf"\| {metrics[folder]['auc']:.3f} \[", row) for row in rows), rows
    for name, values in record["leave_one_folder_out"]["results"].items():
        if "sbi" not in name:
            assert f"{values['auc']:.3f} [" in card


def test_shipped_weights_give_the_recorded_scores(record, tmp_path):
    from skimage import data

    expected = record["reference_scores"]["scores"]
    paths = []
    for name in expected:
        path = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        paths.append(path)
    frame = classify_files(paths, "cnn", progress=False, num_workers=0, device="cpu")
    for path, score, region in zip(frame["path"], frame["fake_score"], frame["region"]):
        want = expected[Path(path).stem]
        assert region == want["region"]
        assert score == pytest.approx(want["fake_score"], abs=2e-3)
    threshold = record["spec"]["threshold"]
    for path, label in zip(frame["path"], frame["label"]):
        want = expected[Path(path).stem]["fake_score"]
        assert label == ("fake" if want >= threshold else "real")


@needs_shared_data()
def test_shipped_model_separates_held_out_stylegan_faces(tmp_path):
    """On validation images (never trained on) of a folder the model card reports AUC 0.99 for,
    the shipped model must still rank fakes above reals."""
    from sklearn.metrics import roc_auc_score

    from deepfake_toolkit.train import TrainConfig, find_labelled_images, read_groups, \
        split_by_source

    # The training run's split: the same groups, seed and fraction.
    script = Path(__file__).resolve().parents[1] / "scripts" / "faces_train_groups.py"
    subprocess.run([sys.executable, str(script), str(SHARED_DATA), str(tmp_path / "groups.csv")],
                   check=True, capture_output=True)
    table = find_labelled_images(SHARED_DATA, read_groups(tmp_path / "groups.csv"))
    table = table[split_by_source(table, TrainConfig().val_fraction, TrainConfig().seed)]
    part = table[table["source"] == "hardfake_tpdne_unsplash"]
    sample = pd.concat([part[part["label"] == 0].head(15), part[part["label"] == 1].head(15)])
    frame = classify_files(sample["path"].tolist(), "cnn", progress=False, num_workers=0,
                           device="cpu")
    assert roc_auc_score(sample["label"], frame["fake_score"]) >= 0.9


def test_channels_last_layout_gives_the_same_scores():
    """The CNN runs channels-last for speed; the layout must not change a score."""
    import torch

    detector = load_model("cnn", device="cpu")
    assert detector.spec.channels_last
    batch = torch.rand(4, 3, 224, 224) * 2 - 1
    fast = detector.predict(batch)
    detector.module.to(memory_format=torch.contiguous_format)
    plain = detector.spec.scores_from_output(detector.module(batch)).detach().numpy()
    assert abs(fast - plain).max() < 1e-4
