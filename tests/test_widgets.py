"""The explorer driven from Python as a user would drive it: set values, press buttons."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import ipywidgets as widgets
import pandas as pd
import pytest
from plotly.callbacks import BoxSelector, Points

from deepfake_toolkit.images import find_images
from deepfake_toolkit.labels import known_label
from deepfake_toolkit.plots import score_histogram
from deepfake_toolkit.models import WeightFile, get_spec, register_model, unregister_model
from deepfake_toolkit.results import read_csv
from deepfake_toolkit.widgets import Explorer, model_options

pytestmark = pytest.mark.usefixtures("notebook_env")


def _run(explorer: Explorer, timeout: float = 120.0) -> None:
    explorer.run_button.click()
    assert explorer.wait(timeout), "the classification did not finish in time"
    assert explorer.error == ""


def test_known_labels_come_from_real_and_fake_folders(tmp_path: Path) -> None:
    assert known_label(tmp_path / "case" / "fake" / "a.png", tmp_path) == "fake"
    assert known_label(tmp_path / "real" / "x" / "a.png", tmp_path) == "real"
    assert known_label(tmp_path / "fake" / "real" / "a.png", tmp_path) == "real"
    assert known_label(tmp_path / "fake" / "a.png", tmp_path / "fake") == ""
    assert known_label(tmp_path / "images" / "a.png") == ""


def test_model_list_says_which_models_have_weights(tmp_path: Path) -> None:
    captions = {name: caption for caption, name in model_options()}
    assert captions["default"] == "default (weights present)"
    explorer = Explorer(tmp_path)
    assert explorer.model_select.value == ("default",)
    assert dict(explorer.model_select.options) == {c: n for n, c in captions.items()}


def test_run_fills_table_gallery_and_histogram(sample_folder: Path, tmp_path: Path) -> None:
    explorer = Explorer(tmp_path, gallery_size=50)
    explorer.set_folder(sample_folder)
    assert explorer.folder.resolve() == sample_folder.resolve()
    assert explorer.gallery.children == ()
    _run(explorer)

    files = find_images(sample_folder)
    results = explorer.results
    assert len(results) == len(files)
    assert set(results["known_label"]) == {"real", "fake"}
    assert results["fake_score"].between(0, 1).all()
    assert "Done" in explorer.status.value and not explorer.export_button.disabled
    # Table: one row per image, file names shown.
    assert all(path.name in explorer.table.value for path in files)
    # Gallery: one card per image; a face crop beside the image when a face was found.
    cards = {card.children[-1].value.split("</b>")[0].removeprefix("<b>"): card
             for card in explorer.gallery.children}
    assert set(cards) == {path.name for path in files}
    images_in = {name: sum(isinstance(w, widgets.Image) for w in card.children)
                 for name, card in cards.items()}
    assert images_in["astronaut.png"] == 2 and images_in["chelsea.png"] == 1
    assert "default:" in cards["astronaut.png"].children[-1].value
    # Histogram: the scores, split by known label.
    counts = {trace.name: len(trace.x) for trace in explorer.figure.data}
    expected = results["known_label"].value_counts().to_dict()
    assert counts == expected


def test_filters_threshold_and_histogram_selection(sample_folder: Path) -> None:
    explorer = Explorer(sample_folder, gallery_size=50)
    _run(explorer)
    total = len(explorer.results)
    n_real = int((explorer.results["known_label"] == "real").sum())

    explorer.known_filter.value = "real"
    assert len(explorer.gallery.children) == n_real
    assert "swap_" not in explorer.table.value
    explorer.known_filter.value = "(all)"

    explorer.threshold_slider.value = 0.0
    assert set(explorer.results.loc[explorer.results["fake_score"].notna(), "label"]) == {"fake"}
    explorer.threshold_slider.value = 1.0
    assert set(explorer.results.loc[explorer.results["fake_score"].notna(), "label"]) == {"real"}
    explorer.label_filter.value = "real"
    assert len(explorer.gallery.children) == total
    explorer.label_filter.value = "(all)"

    # A drag-selection on the histogram, as the browser reports it, narrows the gallery.
    scores = explorer.results["fake_score"].sort_values().to_numpy()
    low, high = float(scores[0]) - 1e-3, float(scores[len(scores) // 2]) + 1e-3
    trace = explorer.figure.data[0]
    trace._dispatch_on_selection(Points(point_inds=[], xs=[], ys=[], trace_name=trace.name,
                                        trace_index=0),
                                 BoxSelector(xrange=[high, low], yrange=[0, 5]))
    assert explorer.score_range.value == pytest.approx((max(0, low), high), abs=0.006)
    in_range = explorer.results["fake_score"].between(*explorer.score_range.value).sum()
    assert 0 < len(explorer.gallery.children) == in_range < total
    assert explorer.views.selected_index == 1


def test_export_writes_the_result_schema(sample_folder: Path, tmp_path: Path) -> None:
    explorer = Explorer(sample_folder, threshold=0.0)
    assert explorer.export_csv(tmp_path / "early.csv") is None
    assert "Nothing to save" in explorer.status.value
    _run(explorer)
    explorer.csv_path.value = str(tmp_path / "out" / "scores.csv")
    explorer.export_button.click()
    table = read_csv(tmp_path / "out" / "scores.csv")
    assert "known_label" not in table
    assert len(table) == len(explorer.results)
    assert set(table["label"]) <= {"fake"}


def test_stop_ends_the_run_early(sample_folder: Path, tmp_path: Path) -> None:
    many = tmp_path / "many"
    for copy in range(6):
        shutil.copytree(sample_folder / "real", many / f"set{copy}" / "real")
    total = len(find_images(many))
    explorer = Explorer(many, batch_size=2, face_crop=False)
    explorer.run_button.click()
    assert explorer.running and not explorer.stop_button.disabled
    explorer.stop_button.click()
    assert explorer.wait(120)
    assert 0 < len(explorer.results) < total
    assert "Stopped" in explorer.status.value
    assert explorer.run_button.disabled is False and explorer.stop_button.disabled is True


def test_user_mistakes_are_reported_in_the_ui(tmp_path: Path) -> None:
    explorer = Explorer(tmp_path / "missing")
    assert explorer.folder.resolve() == tmp_path.resolve()
    explorer.set_folder(tmp_path / "missing")
    assert "not a folder" in explorer.status.value
    explorer.run_button.click()
    assert "No image files" in explorer.status.value
    explorer.model_select.value = ()
    explorer.run_button.click()
    assert "at least one model" in explorer.status.value


def test_models_without_weights_are_marked_and_refused(sample_folder: Path) -> None:
    spec = get_spec("default")
    register_model(replace(spec, name="weightless", weights=(
        WeightFile(filename="weightless.safetensors"),)))
    try:
        explorer = Explorer(sample_folder, models=("default", "weightless"))
        assert ("weightless (no weights)", "weightless") in explorer.model_select.options
        explorer.run_button.click()
        assert not explorer.running
        assert "No weights for weightless" in explorer.status.value
    finally:
        unregister_model("weightless")


def test_plain_path_box_when_ipyfilechooser_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                       sample_folder: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def without_filechooser(name, *args, **kwargs):
        if name == "ipyfilechooser":
            raise ImportError("no ipyfilechooser")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_filechooser)
    explorer = Explorer(sample_folder / "real")
    assert isinstance(explorer.folder_chooser, widgets.Text)
    assert explorer.folder == sample_folder / "real"
    explorer.set_folder(sample_folder / "fake")
    assert explorer.folder == sample_folder / "fake"
    explorer.set_folder(sample_folder / "missing")
    explorer.run_button.click()
    assert not explorer.running and "not a folder" in explorer.status.value


def test_static_histogram_without_known_labels(tmp_path: Path) -> None:
    table = pd.DataFrame({"path": ["/x/a.png", "/x/b.png", "/x/c.png"],
                          "model": ["m1", "m1", "m2"], "fake_score": [0.1, 0.9, 0.5]})
    figure = score_histogram(table)
    assert [(t.name, list(t.x)) for t in figure.data] == [("all", [0.1, 0.9]), ("all", [0.5])]
    assert [a.text for a in figure.layout.annotations] == ["m1", "m2"]


def test_names_that_are_not_text_show_and_export(tmp_path: Path) -> None:
    import os

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in (b"caf\xe9.jpg", b"x\r=1+2\r.png"):
        Image.new("RGB", (40, 40), (200, 30, 30)).save(os.fsdecode(bytes(images) + b"/" + name))
    explorer = Explorer(tmp_path, gallery_size=10)
    explorer.set_folder(images)
    _run(explorer)
    assert sorted(explorer.results["path"]) == sorted(str(p) for p in find_images(images))
    # Everything sent to the browser must be encodable text.
    explorer.table.value.encode("utf-8")
    assert "caf\\xe9.jpg" in explorer.table.value
    for card in explorer.gallery.children:
        for part in card.children:
            if isinstance(part, widgets.HTML):
                part.value.encode("utf-8")
    written = explorer.export_csv(tmp_path / "scores.csv")
    assert sorted(read_csv(written)["path"]) == sorted(explorer.results["path"])


def test_provenance_stability_and_heatmap_beside_the_scores(tmp_path: Path, astronaut) -> None:
    from PIL import PngImagePlugin

    pytest.importorskip("captum", reason="captum (the explain extra) is not installed")
    folder = tmp_path / "case"
    folder.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a face\nSteps: 20, Sampler: Euler a, Seed: 1, Model: sdxl")
    astronaut.resize((160, 160)).save(folder / "generated.png", pnginfo=info)
    exif = astronaut.getexif()
    exif[0x010F], exif[0x0110] = "Nikon", "D750"
    astronaut.resize((160, 160)).save(folder / "camera.jpg", exif=exif)
    explorer = Explorer(folder, face_crop=False, stability=True, threshold=0.5)
    _run(explorer)

    results = explorer.results.set_index(explorer.results["path"].map(lambda p: Path(p).name))
    assert results.loc["generated.png", "generator_model"] == "sdxl"
    assert results["stability_scores"].str.count("=").tolist() == [3, 3]
    explorer.provenance_filter.value = "metadata says generated"
    assert list(explorer.filtered()["file"]) == ["generated.png"]
    explorer.provenance_filter.value = "camera EXIF"
    assert list(explorer.filtered()["file"]) == ["camera.jpg"]
    explorer.provenance_filter.value = "(all)"
    flipped = explorer.results["stability_reason"] != ""
    explorer.stability_filter.value = "verdict flipped"
    assert len(explorer.filtered()) == flipped.sum()
    explorer.stability_filter.value = "stable"
    assert len(explorer.filtered()) == (~flipped).sum()
    explorer.stability_filter.value = "(all)"

    cards = {card.children[-1].value.split("</b>")[0].removeprefix("<b>"): card
             for card in explorer.gallery.children}
    text = cards["generated.png"].children[-1].value
    assert "generator: Stable Diffusion web UI (sdxl)" in text and "says generated" in text
    assert "spread under re-encoding" in text
    assert "camera: Nikon D750" in cards["camera.jpg"].children[-1].value
    explain_box = cards["camera.jpg"].children[-2]
    explain_box.children[0].click()
    assert isinstance(explain_box.children[1], widgets.Image)
    overlay = explorer.explain(str(folder / "camera.jpg"), "default")
    assert overlay.size == (160, 160)


def test_threshold_slider_starts_at_the_models_operating_threshold(
        graded_folder: Path, thresholded_model: Path, tmp_path: Path) -> None:
    from deepfake_toolkit.models import load_model
    from deepfake_toolkit.pipeline import classify_files

    from .toy_models import OWN_THRESHOLD, THRESHOLDED_MODEL

    default = Explorer(tmp_path)
    own = load_model("default").scoring
    assert default.threshold_slider.value == pytest.approx(own.threshold)
    assert default.face_crop_box.value is own.face_crop
    assert default.user_threshold is False and default.reset_threshold_button.disabled
    assert f"model default: {own.threshold:.4g}" in default.threshold_note.value

    explorer = Explorer(graded_folder, models=(THRESHOLDED_MODEL,),
                        weights_dir=thresholded_model)
    assert explorer.threshold_slider.value == pytest.approx(OWN_THRESHOLD)
    assert explorer.face_crop_box.value is False  # the toy model scores whole images
    _run(explorer)
    files = sorted(explorer.results["path"])
    classified = classify_files(files, THRESHOLDED_MODEL, face_crop=False,
                                weights_dir=thresholded_model, progress=False, num_workers=0)
    labels = dict(zip(explorer.results["path"], explorer.results["label"]))
    assert labels == dict(zip(classified["path"].map(str), classified["label"]))

    # Moving the slider makes it the user's threshold; reset goes back to the model's own.
    explorer.threshold_slider.value = 0.3
    assert explorer.user_threshold and not explorer.reset_threshold_button.disabled
    assert "your threshold" in explorer.threshold_note.value
    at_user = classify_files(files, THRESHOLDED_MODEL, face_crop=False, threshold=0.3,
                             weights_dir=thresholded_model, progress=False, num_workers=0)
    assert dict(zip(explorer.results["path"], explorer.results["label"])) == \
        dict(zip(at_user["path"].map(str), at_user["label"]))
    assert at_user["label"].tolist() != classified["label"].tolist()
    explorer.reset_threshold_button.click()
    assert explorer.threshold_slider.value == pytest.approx(OWN_THRESHOLD)
    assert not explorer.user_threshold
    assert dict(zip(explorer.results["path"], explorer.results["label"])) == labels


def test_explorer_loads_each_model_once_across_runs(
        graded_folder: Path, thresholded_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfake_toolkit import models, pipeline, widgets as explorer_module

    from .toy_models import THRESHOLDED_MODEL

    loaded = []

    def counting_load(name="default", *args, **kwargs):
        loaded.append(name)
        return models.loading.load_model(name, *args, **kwargs)

    for module in (models, pipeline, explorer_module):
        monkeypatch.setattr(module, "load_model", counting_load)
    explorer = Explorer(graded_folder, models=(THRESHOLDED_MODEL,),
                        weights_dir=thresholded_model)
    _run(explorer)
    explorer.threshold_slider.value = 0.4
    _run(explorer)
    assert loaded == [THRESHOLDED_MODEL]
    results = explorer.results
    assert results["label"].tolist() == ["fake" if score >= 0.4 else "real"
                                         for score in results["fake_score"]]
