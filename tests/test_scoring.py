"""One scoring policy per model: every registered model is complete, and every entry point
labels the same image the same way."""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_toolkit.faces import FaceCropConfig
from deepfake_toolkit.models import get_spec, list_models
from deepfake_toolkit.models.loading import Detector, check_recorded_spec, save_weights, \
    _with_record
from deepfake_toolkit.results import Bands, Threshold
from deepfake_toolkit.scoring import Scoring, ScoringMismatchWarning, run_policies


def _direct_fake_probability(spec, output: torch.Tensor) -> np.ndarray:
    """P(fake) computed by hand from the raw output, independently of ``scores_from_output``."""
    values = output.detach().double().numpy().reshape(output.shape[0], -1)
    if spec.output == "softmax":
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        return shifted[:, spec.fake_index] / shifted.sum(axis=1)
    positive = 1.0 / (1.0 + np.exp(-values[:, 0]))
    return positive if spec.output == "sigmoid_fake" else 1.0 - positive


_BUILT: dict[object, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}


def _build(spec) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """``spec.build()`` and a store for its outputs, shared by the models that build the same
    module (one architecture, several fine-tunings): each architecture is built and run once per
    test run (a BNext-M forward pass takes seconds on a CPU)."""
    build = spec.build
    key = ((build.func, build.args, tuple(sorted(build.keywords.items())))
           if isinstance(build, functools.partial) else build)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT.clear()  # one module alive at a time: the BNext-M modules are large
        _BUILT[key] = (build().eval(), {})
    return _BUILT[key]


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_is_complete(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    module, outputs = _build(spec)
    # Its spec round-trips through the record a weight file carries.
    described = spec.describe()
    assert json.loads(json.dumps(described)) == described
    record_file = save_weights(spec, {"probe": torch.zeros(1)}, tmp_path / "w.safetensors")
    recorded = check_recorded_spec(spec, record_file)
    assert recorded == described
    again = _with_record(spec, recorded)
    assert (again.threshold, again.face_crop, again.preprocess) == \
        (spec.threshold, spec.face_crop, spec.preprocess)
    # Its transform gives the input size it declares, for any image shape.
    detector = Detector(spec=spec, module=module, device=torch.device("cpu"),
                        weights_path=record_file)
    images = [Image.new("RGB", (301, 177), (120, 90, 60)),
              Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 97, 3), np.uint8))]
    batch = torch.stack([detector.transform(image) for image in images])
    size = spec.preprocess.input_size
    assert batch.shape == (2, 3, size, size)
    # A forward pass maps to P(fake) as the output convention says, per image.
    if "raw" not in outputs:
        hook = module.register_forward_hook(lambda _m, _i, out: outputs.update(raw=out))
        try:
            scores = detector.predict(batch)
        finally:
            hook.remove()
        assert scores.shape == (2,)
        np.testing.assert_allclose(scores, spec.scores_from_output(outputs["raw"]).numpy())
    expected = _direct_fake_probability(spec, outputs["raw"])
    np.testing.assert_allclose(spec.scores_from_output(outputs["raw"]).numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    # Its policy is complete: a region and a label rule.
    policy = detector.scoring
    assert policy.face is None or isinstance(policy.face, FaceCropConfig)
    if spec.threshold is None:
        assert policy.rule == "bands" and policy.labels == Bands()
    else:
        assert policy.rule == f"threshold {spec.threshold:g} (model)"
        assert policy.labels == Threshold(spec.threshold)


def test_label_rule_precedence() -> None:
    own = Scoring(threshold=0.3)
    assert own.labels == Threshold(0.3) and own.rule == "threshold 0.3 (model)"
    assert own.override(bands=True).labels == Bands()
    assert own.override(bands=True).rule == "bands"
    user = own.override(threshold=0.7, bands=True)
    assert user.labels == Threshold(0.7) and user.rule == "threshold 0.7 (user)"
    assert Scoring().labels == Bands()
    # Overrides left unset keep the model's own.
    assert own.override() == own


def test_region_overrides_start_from_the_models_own_settings() -> None:
    own = Scoring(face=FaceCropConfig(margin=0.2, min_face_size=40), threshold=0.5)
    changed = own.override(face_config={"select": "all"})
    assert changed.face == FaceCropConfig(margin=0.2, min_face_size=40, select="all")
    assert own.override(face_crop=False).face is None
    assert own.override(face_crop=False).override(face_crop=True).face == FaceCropConfig()
    with pytest.raises(ValueError, match="wrong type"):
        own.override(face_config={"margin": "wide"})
    with pytest.raises(ValueError, match="unknown face-crop settings"):
        own.override(face_config={"marign": 0.3})


def test_a_run_on_another_region_than_the_models_warns() -> None:
    own = Scoring(face=FaceCropConfig(), threshold=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_policies([("m", own)]) == [own]
        run_policies([("m", own)], threshold=0.9, bands=True, no_face="skip")
    with pytest.warns(ScoringMismatchWarning, match=r"margin: 0\.1 -> 0\.3"):
        run_policies([("m", own)], face_config={"margin": 0.3})
    with pytest.warns(ScoringMismatchWarning, match="face crop -> whole image"):
        run_policies([("m", own)], face_crop=False)


def test_several_models_share_the_first_models_region_and_keep_their_label_rules() -> None:
    first = Scoring(face=FaceCropConfig(margin=0.1), threshold=0.4)
    second = Scoring(face=FaceCropConfig(margin=0.25), threshold=None)
    with pytest.warns(ScoringMismatchWarning, match="'second'"):
        policies = run_policies([("first", first), ("second", second)])
    assert [p.face for p in policies] == [first.face, first.face]
    assert [p.rule for p in policies] == ["threshold 0.4 (model)", "bands"]


def test_damaged_face_crop_records_are_refused(tmp_path: Path) -> None:
    from deepfake_toolkit.models import WeightsFileError

    spec = dataclasses.replace(get_spec("cnn"), face_crop=None)
    path = save_weights(spec, {"probe": torch.zeros(1)}, tmp_path / "w.safetensors")
    assert _with_record(get_spec("cnn"), check_recorded_spec(spec, path)).face_crop is None
    for bad in ({"margin": "x"}, {"select": "biggest"}, ["margin"], {"unknown": 1}):
        bad_spec = dataclasses.replace(spec)
        record = {**bad_spec.describe(), "face_crop": bad}
        from safetensors.torch import save_file

        target = tmp_path / "bad.safetensors"
        save_file({"probe": torch.zeros(1)}, str(target),
                  metadata={"deepfake_toolkit.spec": json.dumps(record)})
        with pytest.raises(WeightsFileError, match="face-crop settings"):
            check_recorded_spec(get_spec("cnn"), target)


# --- the same labels from every entry point --------------------------------------------------

RECORDED_MODEL = "toy_recorded_policy"


@pytest.fixture(scope="module")
def recorded_model(tmp_path_factory: pytest.TempPathFactory):
    """A registered model whose registry entry has no threshold and a face crop, and whose
    weight file records a threshold and the whole image: what the file records must win."""
    from deepfake_toolkit.models import ModelSpec, Preprocess, WeightFile, register_model, \
        unregister_model
    from deepfake_toolkit.pipeline import classify_files

    from safetensors.torch import load_file

    from .toy_models import BrightPatchScore

    spec = ModelSpec(
        name=RECORDED_MODEL, description="toy model with a recorded policy",
        build=BrightPatchScore,
        load_state_dict=load_file,
        preprocess=Preprocess(input_size=32, resize="exact"), output="sigmoid_fake",
        weights=(WeightFile(f"{RECORDED_MODEL}.safetensors"),))
    register_model(spec)
    folder = tmp_path_factory.mktemp("recorded")
    images = folder / "images"
    images.mkdir()
    for index, side in enumerate((0, 4, 8, 12, 16, 20, 24, 28)):
        pixels = np.full((40, 40, 3), 60, np.uint8)
        pixels[4:4 + side, 4:4 + side] = 250
        Image.fromarray(pixels).save(images / f"patch{index}.png")
    weights = folder / "weights"
    # The operating threshold sits between the images' scores, so that both labels occur.
    scores = classify_files(sorted(images.iterdir()),
                            model=Detector(dataclasses.replace(spec, face_crop=None),
                                           BrightPatchScore().eval(), torch.device("cpu"),
                                           weights / "x"),
                            face_crop=False, num_workers=0, progress=False,
                            provenance=False)["fake_score"].to_numpy()
    threshold = round(float(np.median(scores)), 4)
    save_weights(dataclasses.replace(spec, threshold=threshold, face_crop=None),
                 BrightPatchScore().state_dict(), weights / f"{RECORDED_MODEL}.safetensors")
    yield images, weights, threshold
    unregister_model(RECORDED_MODEL)


def _labels(table) -> list[tuple[str, str, str]]:
    ordered = table.assign(name=[Path(p).name for p in table["path"]]).sort_values("name")
    return list(zip(ordered["name"], ordered["label"], ordered["label_rule"]))


def _server_labels(images: Path, weights: Path, out: Path, threshold: str) -> list:
    from deepfake_toolkit.results import read_csv
    from deepfake_toolkit.server import DetectorService, create_server

    client = create_server(DetectorService(weights_dir=weights, device="cpu",
                                           num_workers=0)).app.test_client()
    out.mkdir()
    response = client.post("/predict", json={
        "inputs": {"input_dataset": {"path": str(images)}, "output_file": {"path": str(out)}},
        "parameters": {"models": RECORDED_MODEL, "facecrop": "model", "threshold": threshold}})
    assert response.status_code == 200, response.get_data(as_text=True)
    return _labels(read_csv(next(out.glob("*.csv"))))


def _cli_labels(images: Path, weights: Path, out: Path, *options: str) -> list:
    from deepfake_toolkit.cli import main
    from deepfake_toolkit.results import read_csv

    status = main(["classify", str(images), "-m", RECORDED_MODEL, "--weights-dir", str(weights),
                   "-o", str(out), "--workers", "0", "--quiet", "--no-provenance", *options])
    assert status == 0
    return _labels(read_csv(out))


def test_classify_cli_and_server_label_with_the_policy_the_weights_record(
        recorded_model, tmp_path: Path) -> None:
    from deepfake_toolkit.pipeline import classify_directory

    images, weights, threshold = recorded_model
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScoringMismatchWarning)  # the model's own region
        table = classify_directory(images, RECORDED_MODEL, weights_dir=weights, num_workers=0,
                                   progress=False, provenance=False)
    # The recorded policy: the whole image, labelled at the recorded threshold.
    assert not table["face_crop"].any() and set(table["region"]) == {"image"}
    assert set(table["label_rule"]) == {f"threshold {threshold:g} (model)"}
    expected = ["fake" if s >= threshold else "real" for s in
                table.sort_values("path")["fake_score"]]
    assert [label for _, label, _ in _labels(table)] == expected
    assert set(expected) == {"fake", "real"}
    python = _labels(table)
    assert _cli_labels(images, weights, tmp_path / "cli.csv") == python
    assert _server_labels(images, weights, tmp_path / "server", "") == python


def test_a_user_threshold_gives_the_same_labels_everywhere(recorded_model, tmp_path: Path) -> None:
    from deepfake_toolkit.pipeline import classify_directory

    images, weights, threshold = recorded_model
    chosen = round(threshold + 0.0005, 4)
    table = classify_directory(images, RECORDED_MODEL, weights_dir=weights, num_workers=0,
                               progress=False, provenance=False, threshold=chosen)
    python = _labels(table)
    assert {rule for _, _, rule in python} == {f"threshold {chosen:g} (user)"}
    assert _cli_labels(images, weights, tmp_path / "cli.csv", "--threshold", str(chosen)) == python
    assert _server_labels(images, weights, tmp_path / "server", str(chosen)) == python
    bands = _labels(classify_directory(images, RECORDED_MODEL, weights_dir=weights,
                                       num_workers=0, progress=False, provenance=False,
                                       bands=True))
    assert {rule for _, _, rule in bands} == {"bands"}
    assert _cli_labels(images, weights, tmp_path / "bands.csv", "--bands") == bands
    assert _server_labels(images, weights, tmp_path / "server-bands", "bands") == bands


def test_a_face_crop_override_is_recorded_and_warned_about(recorded_model, tmp_path: Path,
                                                           capsys) -> None:
    from deepfake_toolkit.cli import main

    images, weights, _ = recorded_model
    assert main(["classify", str(images), "-m", RECORDED_MODEL, "--weights-dir", str(weights),
                 "-o", str(tmp_path / "face.csv"), "--workers", "0", "--quiet",
                 "--no-provenance", "--face-crop", "--margin", "0.3"]) == 0
    err = capsys.readouterr().err
    assert "warning: model 'toy_recorded_policy' was trained and validated on other" in err
    assert "region: whole image -> face crop" in err
    from deepfake_toolkit.results import read_csv

    assert read_csv(tmp_path / "face.csv")["face_crop"].all()


def test_cuda_without_a_gpu_exits_2(capsys, tmp_path: Path) -> None:
    from deepfake_toolkit.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["classify", str(tmp_path), "--device", "cuda", "-o",
                 str(tmp_path / "x.csv")]) == 2
    assert "no usable CUDA GPU" in capsys.readouterr().err


def test_every_face_crop_setting_is_readable_from_a_record_and_reachable_from_the_cli() -> None:
    from deepfake_toolkit.cli import FACE_SETTINGS
    from deepfake_toolkit.scoring import HELP, _FACE_SETTING_TYPES

    fields = {field.name for field in dataclasses.fields(FaceCropConfig)}
    assert set(_FACE_SETTING_TYPES) == fields
    assert set(FACE_SETTINGS) == fields
    assert fields <= set(HELP)
