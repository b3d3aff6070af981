import dataclasses
import math
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepfake_toolkit import classify_directory, classify_files, load_model
from deepfake_toolkit.models import WeightFile, get_spec, register_model, save_weights, \
    unregister_model
from deepfake_toolkit.results import COLUMNS, read_csv

from .corpus import BAD, CORPUS_MAX_PIXELS, write_corpus


@pytest.fixture(scope="module")
def detector(random_cnn_weights):
    return load_model("cnn", weights_dir=random_cnn_weights, device="cpu")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)


def test_one_row_per_file_bad_files_recorded(detector, corpus, tmp_path):
    folder, kinds = corpus
    out = tmp_path / "scores.csv"
    frame = classify_directory(folder, detector, face_crop=False, max_pixels=CORPUS_MAX_PIXELS,
                               output_csv=out, progress=False, num_workers=2, batch_size=4)
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(kinds)
    relative = {str(p)[len(str(folder)) + 1:]: row for p, row in
                zip(frame["path"], frame.to_dict("records"))}
    for name, kind in kinds.items():
        row = relative[name]
        if kind == BAD:
            assert row["error"] and row["label"] == "error" and math.isnan(row["fake_score"])
        else:
            assert row["error"] == "" and 0.0 <= row["fake_score"] <= 1.0
            assert row["region"] == "image" and not row["face_crop"]
    assert read_csv(out)["path"].tolist() == frame["path"].tolist()


def test_scores_match_direct_prediction(detector, astronaut, tmp_path):
    astronaut.save(tmp_path / "a.png")
    frame = classify_files([tmp_path / "a.png"], detector, face_crop=False, progress=False)
    assert frame["fake_score"][0] == pytest.approx(detector.predict_images([astronaut])[0],
                                                   abs=1e-6)
    assert frame["width"][0] == 512 and frame["height"][0] == 512


def test_face_crop_and_no_face_policies(detector, astronaut, no_face_image, tmp_path):
    astronaut.save(tmp_path / "face.png")
    no_face_image.save(tmp_path / "cup.png")
    whole = classify_directory(tmp_path, detector, progress=False).set_index("path")
    face_row = whole.loc[str(tmp_path / "face.png")]
    assert face_row["region"] == "face" and face_row["face_found"] and face_row["n_faces"] == 1
    assert face_row["face_prob"] > 0.99 and len(face_row["face_box"]) == 4
    cup_row = whole.loc[str(tmp_path / "cup.png")]
    assert cup_row["region"] == "image" and not cup_row["face_found"]
    assert cup_row["no_face_policy"] == "whole" and not math.isnan(cup_row["fake_score"])

    skipped = classify_directory(tmp_path, detector, no_face="skip",
                                 progress=False).set_index("path")
    cup_row = skipped.loc[str(tmp_path / "cup.png")]
    assert cup_row["label"] == "no face" and math.isnan(cup_row["fake_score"])
    assert cup_row["no_face_policy"] == "skip" and cup_row["error"] == ""
    assert skipped.loc[str(tmp_path / "face.png"), "fake_score"] == pytest.approx(
        face_row["fake_score"])


def test_face_crop_score_is_the_crops_score(detector, astronaut, tmp_path):
    from deepfake_toolkit.faces import FaceCropper

    astronaut.save(tmp_path / "face.png")
    frame = classify_files([tmp_path / "face.png"], detector, progress=False)
    cropper = FaceCropper()
    crop = cropper.crop(astronaut, cropper.detect([astronaut])[0][0])
    assert frame["fake_score"][0] == pytest.approx(detector.predict_images([crop])[0], abs=1e-5)


def test_every_face_mode_scores_each_face_and_keeps_the_highest(detector, astronaut, tmp_path):
    pair = Image.new("RGB", (1024, 512))
    pair.paste(astronaut, (0, 0))
    pair.paste(astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (512, 0))
    pair.save(tmp_path / "two.png")
    from deepfake_toolkit.faces import FaceCropConfig

    frame = classify_files([tmp_path / "two.png"], detector, progress=False,
                           face_config=FaceCropConfig(select="all"))
    assert frame["n_faces"][0] == 2
    single = classify_files([tmp_path / "two.png"], detector, progress=False)
    # The largest face is one of the faces scored; float32 scores of a crop in a batch of two and
    # alone may differ in the last bits (measured 6e-8), hence the tolerance.
    assert frame["fake_score"][0] >= single["fake_score"][0] - 1e-6


def test_threshold_and_bands_labels(detector, astronaut, tmp_path):
    astronaut.save(tmp_path / "a.png")
    score = classify_files([tmp_path / "a.png"], detector, face_crop=False,
                           progress=False)["fake_score"][0]
    below = classify_files([tmp_path / "a.png"], detector, face_crop=False, progress=False,
                           threshold=min(1.0, score + 0.01))
    above = classify_files([tmp_path / "a.png"], detector, face_crop=False, progress=False,
                           threshold=max(0.0, score - 0.01))
    assert below["label"][0] == "real" and above["label"][0] == "fake"


def test_several_models_give_one_row_per_file_and_model(random_cnn_weights, astronaut,
                                                        tmp_path):
    base = get_spec("cnn")
    small = dataclasses.replace(base, name="cnn_at_160",
                                preprocess=dataclasses.replace(base.preprocess, input_size=160),
                                weights=(WeightFile("cnn_at_160.safetensors"),))
    register_model(small)
    try:
        state = load_model("cnn", random_cnn_weights).module.state_dict()
        save_weights(small, state, random_cnn_weights / "cnn_at_160.safetensors")
        astronaut.save(tmp_path / "a.png")
        astronaut.save(tmp_path / "b.png")
        frame = classify_files([tmp_path / "a.png", tmp_path / "b.png"],
                               ["cnn", "cnn_at_160"], face_crop=False, progress=False,
                               weights_dir=random_cnn_weights)
        assert sorted(frame["model"]) == ["cnn", "cnn", "cnn_at_160",
                                          "cnn_at_160"]
        by_model = frame.groupby("model")["fake_score"]
        assert by_model.nunique().tolist() == [1, 1]
        alone = classify_files([tmp_path / "a.png"], "cnn_at_160", face_crop=False,
                               progress=False, weights_dir=random_cnn_weights)
        assert by_model.first()["cnn_at_160"] == pytest.approx(alone["fake_score"][0])
        assert by_model.first()["cnn"] != pytest.approx(alone["fake_score"][0], abs=1e-7)
    finally:
        unregister_model("cnn_at_160")
        (random_cnn_weights / "cnn_at_160.safetensors").unlink(missing_ok=True)


def test_stop_event_returns_partial_results(detector, tmp_path):
    for i in range(12):
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(tmp_path / f"{i:02d}.png")
    stop = threading.Event()
    seen = []

    def on_batch(rows: pd.DataFrame) -> None:
        seen.append(len(rows))
        stop.set()

    frame = classify_directory(tmp_path, detector, face_crop=False, batch_size=4, stop=stop,
                               on_batch=on_batch, progress=False, num_workers=0)
    assert len(frame) == 4 and seen == [4] and frame.attrs["stopped"] is True


def test_perturbation_is_applied_before_scoring(detector, astronaut, tmp_path):
    astronaut.save(tmp_path / "a.png")
    plain = classify_files([tmp_path / "a.png"], detector, face_crop=False, progress=False)
    flipped = classify_files([tmp_path / "a.png"], detector, face_crop=False, progress=False,
                             perturb=_darken)
    assert plain["fake_score"][0] != pytest.approx(flipped["fake_score"][0], abs=1e-7)
    assert flipped["width"][0] == 512


def _darken(image: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(image) // 4).astype(np.uint8))


def test_bad_arguments_are_refused(detector, tmp_path):
    with pytest.raises(ValueError, match="no_face"):
        classify_files([], detector, no_face="ignore")
    with pytest.raises(NotADirectoryError):
        classify_directory(tmp_path / "missing", detector)
    empty = classify_files([], detector, progress=False)
    assert list(empty.columns) == list(COLUMNS) and len(empty) == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_ctrl_c_keeps_and_writes_the_rows_scored_so_far(detector, tmp_path, workers):
    import os
    import signal

    from deepfake_toolkit.pipeline import ClassificationInterrupted

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(folder / f"{i:02d}.png")
    seen = []

    def on_batch(rows: pd.DataFrame) -> None:
        seen.append(len(rows))
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)   # what Ctrl+C sends

    out = tmp_path / "out.csv"
    # Python's own Ctrl+C handler, whatever an earlier test or library left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(ClassificationInterrupted) as caught:
            classify_directory(folder, detector, face_crop=False, batch_size=4,
                               on_batch=on_batch, progress=False, num_workers=workers,
                               output_csv=out)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [4, 4]
    written = read_csv(out)
    assert len(written) == 8 and len(caught.value.frame) == 8
    assert list(written["path"]) == [str(folder / f"{i:02d}.png") for i in range(8)]
    assert caught.value.frame.attrs["stopped"] is True


def test_progress_moves_per_image(detector, tmp_path, monkeypatch):
    from deepfake_toolkit import pipeline

    for i in range(6):
        Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(tmp_path / f"{i:02d}.png")
    updates = []

    class Bar:
        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(pipeline, "_progress_bar", lambda *args: Bar())
    classify_directory(tmp_path, detector, face_crop=False, batch_size=4, num_workers=0)
    assert updates == [1] * 6


@pytest.mark.parametrize("workers", [0, 2])
def test_batched_detection_in_the_main_process_gives_the_rows_of_detection_in_workers(
        detector, astronaut, no_face_image, tmp_path, monkeypatch, workers):
    """The CUDA path (MTCNN batched in the main process), run on the CPU."""
    from deepfake_toolkit import pipeline

    astronaut.save(tmp_path / "face.png")
    astronaut.resize((300, 300)).rotate(8).save(tmp_path / "face_small.jpg")
    no_face_image.save(tmp_path / "cup.png")
    Image.new("RGB", (1, 1), "white").save(tmp_path / "dot.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    files = sorted(tmp_path.iterdir())
    in_workers = classify_files(files, detector, num_workers=workers, progress=False,
                                provenance=False)
    calls = []
    batched = pipeline._detect_in_main

    def detect_in_main(*args, **kwargs):
        calls.append(len(args[0]))
        return batched(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_detects_in_batches", lambda cropper, device: True)
    monkeypatch.setattr(pipeline, "_detect_in_main", detect_in_main)
    in_main = classify_files(files, detector, num_workers=workers, progress=False,
                             provenance=False, batch_size=4)
    assert calls == [4, 1]
    for column in ("path", "label", "region", "face_found", "n_faces", "error"):
        assert in_main[column].tolist() == in_workers[column].tolist(), column
    np.testing.assert_allclose(in_main["fake_score"], in_workers["fake_score"], atol=1e-5)
    assert in_main.set_index("path").loc[str(tmp_path / "face.png"), "region"] == "face"
    assert in_main.set_index("path").loc[str(tmp_path / "broken.jpg"), "label"] == "error"
