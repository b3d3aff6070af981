"""Labels, file facts, perturbations, the confound check, scoring, reports and the CLI."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from PIL import Image

from deepfake_toolkit import cli, plots
from deepfake_toolkit.confounds import (
    ConfoundWarning,
    confound_check,
    estimate_jpeg_quality,
    file_facts,
)
from deepfake_toolkit.evaluate import evaluate_directory, evaluate_table, score_labelled
from deepfake_toolkit.labels import ALL_IMAGES, LabelError, folder_label, label_files
from deepfake_toolkit.operating_points import apply_operating_points, fit_operating_points
from deepfake_toolkit.per_image import PER_IMAGE_COLUMNS, read_per_image, write_per_image
from deepfake_toolkit.perturbations import (
    ROBUSTNESS_SUITE,
    Downscale,
    GaussianBlur,
    JpegCompression,
)

from .toy_models import OWN_THRESHOLD, THRESHOLDED_MODEL

PROJECT = Path(__file__).resolve().parents[1]


def _save(path: Path, seed: int, size: tuple[int, int] = (48, 40), quality: int = 90) -> None:
    """A small noisy image; a mid-grey bias keeps its colours away from saturation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 200, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=quality)


def _synthetic_table(labelled: pd.DataFrame, scores: np.ndarray, model: str = "m"
                     ) -> pd.DataFrame:
    """A per-image table for given scores without running a model (width/height from files)."""
    facts = file_facts(labelled["path"])
    sizes = [Image.open(p).size for p in labelled["path"]]
    table = labelled.merge(facts, on="path").assign(
        model=model, fake_score=scores, label="", width=[s[0] for s in sizes],
        height=[s[1] for s in sizes], perturbation="none")
    return apply_operating_points(table, {})


# --------------------------------------------------------------------------------------------
# Labels


def test_folder_label_rules():
    assert folder_label("real/a.jpg") == ("real", "")
    assert folder_label("FAKE/stylegan2/a.png") == ("fake", "stylegan2")
    assert folder_label("progan/cat/1_fake/a.png") == ("fake", "progan/cat")
    assert folder_label("progan/cat/0_real/a.png") == ("real", "progan/cat")
    assert folder_label("misc/a.png") == (None, "misc")
    # The file's own name never counts as a folder.
    assert folder_label("misc/fake") == (None, "misc")
    with pytest.raises(LabelError, match="ambiguous"):
        folder_label("real/fake/a.png")


def test_label_files_by_folder_keeps_subsets_and_warns_on_unlabelled(tmp_path):
    _save(tmp_path / "gan" / "0_real" / "a.jpg", 0)
    _save(tmp_path / "gan" / "1_fake" / "b.jpg", 1)
    _save(tmp_path / "diffusion" / "Real" / "c.jpg", 2)
    _save(tmp_path / "diffusion" / "fake" / "d.jpg", 3)
    _save(tmp_path / "unsorted" / "e.jpg", 4)
    with pytest.warns(UserWarning, match="1 images .* no real/fake folder"):
        labelled = label_files(tmp_path)
    by_name = {Path(p).name: (t, s) for p, t, s in labelled.itertuples(index=False)}
    assert by_name == {"a.jpg": ("real", "gan"), "b.jpg": ("fake", "gan"),
                       "c.jpg": ("real", "diffusion"), "d.jpg": ("fake", "diffusion")}


def test_label_files_without_any_label_is_an_error(tmp_path):
    _save(tmp_path / "x.jpg", 0)
    with pytest.raises(LabelError, match="no labelled images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        label_files(tmp_path)


def test_label_files_by_prefix(tmp_path):
    _save(tmp_path / "F001.jpg", 0)
    _save(tmp_path / "set2" / "Fake_2.jpg", 1)
    _save(tmp_path / "R001.jpg", 2)
    _save(tmp_path / "face.jpg", 3)  # lower-case f: real under the original's rule
    labelled = label_files(tmp_path, "prefix")
    by_name = {Path(p).name: (t, s) for p, t, s in labelled.itertuples(index=False)}
    assert by_name == {"F001.jpg": ("fake", ""), "Fake_2.jpg": ("fake", "set2"),
                       "R001.jpg": ("real", ""), "face.jpg": ("real", "")}


def test_label_files_from_csv(tmp_path):
    images = tmp_path / "images"
    _save(images / "a.jpg", 0)
    _save(images / "b.jpg", 1)
    _save(images / "c.jpg", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("Path,Label,Subset\na.jpg,0,x\nb.jpg,fake,y\n"
                      f"{images / 'c.jpg'},REAL,x\nmissing.jpg,1,x\n")
    with pytest.warns(UserWarning, match="1 files listed .* not found"):
        labelled = label_files(images, labels)
    assert list(labelled["true_label"]) == ["real", "fake", "real"]
    assert list(labelled["subset"]) == ["x", "y", "x"]
    assert Path(labelled["path"][0]) == images / "a.jpg"
    labels.write_text("path,label\na.jpg,maybe\n")
    with pytest.raises(LabelError, match="neither real nor fake"):
        label_files(images, labels)
    labels.write_text("file,truth\na.jpg,1\n")
    with pytest.raises(LabelError, match="needs the columns path and label"):
        label_files(images, labels)
    with pytest.raises(LabelError, match="folder, prefix or a labels CSV"):
        label_files(images, tmp_path / "nothing.csv")


# --------------------------------------------------------------------------------------------
# File facts and perturbations


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_is_recovered_from_quantisation_tables(tmp_path, quality):
    _save(tmp_path / "a.jpg", 0, quality=quality)
    with Image.open(tmp_path / "a.jpg") as image:
        assert estimate_jpeg_quality(image.quantization) == quality


def test_file_facts(tmp_path):
    _save(tmp_path / "a.jpg", 0, quality=75)
    _save(tmp_path / "b.png", 0)
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    facts = file_facts([tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "c.jpg"])
    assert list(facts["file_format"]) == ["jpeg", "png", ""]
    assert facts["jpeg_quality"][0] == 75 and np.isnan(facts["jpeg_quality"][1:]).all()
    assert facts["file_bytes"][2] == len(b"not an image")


def test_perturbations_are_picklable_and_do_what_they_say(rgb_noise):
    assert len(ROBUSTNESS_SUITE) == 9
    names = [p.name for p in ROBUSTNESS_SUITE]
    assert names[0] == "jpeg_q95" and "blur_s2" in names and names[-1] == "downscale_0.25"
    for perturbation in ROBUSTNESS_SUITE:
        restored = pickle.loads(pickle.dumps(perturbation))
        assert restored == perturbation
        assert restored(rgb_noise).mode == "RGB"
    assert Downscale(0.25)(rgb_noise).size == (20, 16)
    original = np.asarray(rgb_noise, dtype=float)
    for perturbation in (JpegCompression(30), GaussianBlur(2.0)):
        changed = np.asarray(perturbation(rgb_noise), dtype=float)
        assert changed.shape == original.shape
        # Both smooth random noise, so the pixel spread falls.
        assert changed.std() < original.std() * 0.8
    with pytest.raises(ValueError):
        JpegCompression(0)


# --------------------------------------------------------------------------------------------
# Confound check


def test_confound_check_fires_on_a_confounded_folder(tmp_path):
    # Reals: small JPEGs; fakes: larger PNGs - a detector could learn format and size alone.
    for i in range(6):
        _save(tmp_path / "real" / f"{i}.jpg", i, size=(40, 40), quality=70)
        _save(tmp_path / "fake" / f"{i}.png", 100 + i, size=(64, 64))
    labelled = label_files(tmp_path)
    table = _synthetic_table(labelled, np.linspace(0.1, 0.9, len(labelled)))
    confounds = confound_check(table)
    flagged = set(confounds.loc[confounds["confounded"], "feature"])
    assert {"file format", "resolution (pixels)", "file size (bytes)"} <= flagged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluation = evaluate_table(table, n_bootstrap=0)
    raised = [str(w.message) for w in caught if issubclass(w.category, ConfoundWarning)]
    assert any("differ in file format" in text for text in raised)
    assert raised == evaluation.warnings


def test_confound_check_is_quiet_on_a_balanced_folder(tmp_path):
    # Each fake has a real twin of the same format, quality, size and byte count.
    for i in range(6):
        _save(tmp_path / "real" / f"{i}.jpg", i)
        _save(tmp_path / "fake" / f"{i}.jpg", i)
    labelled = label_files(tmp_path)
    table = _synthetic_table(labelled, np.linspace(0.1, 0.9, len(labelled)))
    confounds = confound_check(table)
    assert not confounds["confounded"].any()
    assert confounds["auc"].dropna().eq(0.5).all()
    overall = confounds[confounds["subset"] == ALL_IMAGES].set_index("feature")
    assert overall.loc["file format", "auc"] == pytest.approx(0.5)
    assert overall.loc["resolution (pixels)", "auc"] == pytest.approx(0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfoundWarning)
        evaluate_table(table, n_bootstrap=0)


# --------------------------------------------------------------------------------------------
# Tables, thresholds and per-subset metrics on synthetic scores


def _labelled_twins(tmp_path: Path, n: int = 6) -> pd.DataFrame:
    """Two subsets of n real and n fake images; each fake is a copy of a real (same file facts),
    since these tests give the scores themselves."""
    for i in range(n):
        for offset, subset in enumerate(("gan", "diffusion")):
            _save(tmp_path / subset / "real" / f"{i}.jpg", 100 * offset + i)
            _save(tmp_path / subset / "fake" / f"{i}.jpg", 100 * offset + i)
    return label_files(tmp_path)


def test_metrics_per_subset_and_threshold_transfer(tmp_path):
    labelled = _labelled_twins(tmp_path)
    is_fake = (labelled["true_label"] == "fake").to_numpy()
    rng = np.random.default_rng(0)
    tune_scores = np.where(is_fake, rng.uniform(0.5, 0.9, len(is_fake)),
                           rng.uniform(0.1, 0.4, len(is_fake)))
    tuning = _synthetic_table(labelled, tune_scores)
    points = fit_operating_points(tuning, rule="balanced_accuracy", fitted_on="tune")
    chosen = points["m"].threshold
    assert tune_scores[~is_fake].max() < chosen <= tune_scores[is_fake].min()

    # On the test scores every real sits below the tuned threshold and half the fakes above it.
    test_scores = np.where(is_fake, np.tile([chosen - 0.05, chosen + 0.05], len(is_fake))
                           [:len(is_fake)], chosen - 0.2)
    evaluation = evaluate_table(_synthetic_table(labelled, test_scores), points, n_bootstrap=200)
    overall = evaluation.overall.iloc[0]
    assert overall["threshold"] == pytest.approx(chosen)
    assert overall["real_accuracy"] == pytest.approx(1.0)
    assert overall["fake_accuracy"] == pytest.approx(0.5)
    assert set(evaluation.metrics["subset"]) == {ALL_IMAGES, "gan", "diffusion"}
    subsets = evaluation.metrics.set_index("subset")
    assert subsets.loc["gan", "n_real"] == 6 and subsets.loc["gan", "n_fake"] == 6
    assert not subsets["other_class_from_all"].any()
    verdicts = evaluation.per_image.set_index("path")["label"]
    assert (verdicts[labelled.loc[~is_fake, "path"]] == "real").all()


def test_single_class_subsets_borrow_the_other_class(tmp_path):
    for i in range(4):
        _save(tmp_path / "real" / f"{i}.jpg", i)
        _save(tmp_path / "fake" / "sd" / f"{i}.jpg", 10 + i)
        _save(tmp_path / "fake" / "gan" / f"{i}.jpg", 20 + i)
    labelled = label_files(tmp_path)
    scores = np.where(labelled["subset"] == "sd", 0.9,
                      np.where(labelled["subset"] == "gan", 0.3, 0.2))
    metrics = evaluate_table(_synthetic_table(labelled, scores), n_bootstrap=0).metrics
    by_subset = metrics.set_index("subset")
    assert set(by_subset.index) == {ALL_IMAGES, "sd", "gan"}  # reals alone would repeat (all)
    assert by_subset.loc["sd", "other_class_from_all"]
    assert by_subset.loc["sd", "n_real"] == 4 and by_subset.loc["sd", "n_fake"] == 4
    assert by_subset.loc["sd", "auc"] == pytest.approx(1.0)
    assert by_subset.loc["gan", "auc"] == pytest.approx(1.0)
    assert by_subset.loc["gan", "fake_accuracy"] == pytest.approx(0.0)


def test_calibration_fitted_in_a_table_lowers_ece(tmp_path):
    labelled = _labelled_twins(tmp_path, n=10)
    is_fake = (labelled["true_label"] == "fake").to_numpy()
    rng = np.random.default_rng(2)
    # Over-confident scores: right most of the time, but always near 0 or 1.
    right = rng.uniform(size=len(is_fake)) < 0.75
    scores = np.where(is_fake == right, 0.99, 0.01)
    table = _synthetic_table(labelled, scores)
    raw = evaluate_table(table, n_bootstrap=0).overall.iloc[0]
    points = fit_operating_points(table, rule="fixed", calibration="temperature")
    calibrated = evaluate_table(table, points, n_bootstrap=0)
    assert calibrated.overall.iloc[0]["ece"] < raw["ece"] / 2
    assert calibrated.per_image["calibrated_score"].notna().all()
    assert points["m"].calibration.temperature > 1


# --------------------------------------------------------------------------------------------
# Scoring through the pipeline, figures and the report


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for i in range(3):
        _save(root / "real" / f"r{i}.jpg", i)
        _save(root / "fake" / ("gan" if i < 2 else "diffusion") / f"f{i}.jpg", 50 + i)
    return root


@pytest.fixture(scope="module")
def scored(tiny_folder: Path, random_cnn_weights: Path) -> pd.DataFrame:
    from deepfake_toolkit.models import load_model

    detector = load_model("cnn", weights_dir=random_cnn_weights, device="cpu")
    return score_labelled(label_files(tiny_folder), detector, face_crop=False,
                          perturbations=(JpegCompression(50), Downscale(0.5)), progress=False,
                          num_workers=0)


def test_score_labelled_adds_truth_and_file_facts(scored, tiny_folder):
    assert list(scored.columns) == list(PER_IMAGE_COLUMNS)
    assert len(scored) == 6 * 3
    assert scored.groupby("perturbation").size().to_dict() == {
        "none": 6, "jpeg_q50": 6, "downscale_0.5": 6}
    assert scored["fake_score"].between(0, 1).all()
    names = scored.assign(name=scored["path"].map(lambda p: Path(p).name))
    assert set(names.loc[names["true_label"] == "fake", "name"]) == {"f0.jpg", "f1.jpg", "f2.jpg"}
    assert (scored["jpeg_quality"] == 90).all() and (scored["file_format"] == "jpeg").all()
    # width/height stay those of the file, even when downscaled for scoring.
    assert (scored["width"] == 48).all()
    assert scored["label"].isin(["real", "fake"]).all()


def test_figures_are_plotly_figures(scored):
    evaluation = evaluate_table(scored, n_bootstrap=50)
    figures = evaluation.figures()
    assert set(figures) == {"roc", "pr", "histogram", "reliability", "confusion", "subsets",
                            "robustness"}
    assert all(isinstance(f, go.Figure) for f in figures.values())
    assert evaluation.robustness.set_index("perturbation").loc["jpeg_q50", "n_real"] == 3
    heat = figures["robustness"].data[0]
    assert list(heat.x) == ["none", "jpeg_q50", "downscale_0.5"]


def test_plot_functions_on_plain_tables():
    frame = pd.DataFrame({"model": ["a"] * 4 + ["b"] * 4,
                          "true_label": [0, 0, 1, 1] * 2,
                          "fake_score": [0.1, 0.4, 0.35, 0.8, 0.2, 0.3, 0.6, 0.9]})
    roc = plots.roc_figure(frame)
    assert [t.name for t in roc.data] == ["a (AUC 0.750)", "b (AUC 1.000)", "chance"]
    assert len(plots.pr_figure(frame).data) == 2
    histogram = plots.score_histogram(frame)
    assert [(t.name, t.meta["model"], len(t.x)) for t in histogram.data] == [
        ("real", "a", 2), ("fake", "a", 2), ("real", "b", 2), ("fake", "b", 2)]
    single = plots.roc_figure(frame, group_column=None, log_fpr=True)
    assert len(single.data) == 1 and single.layout.xaxis.type == "log"


def test_report_files_are_written_and_readable(scored, tmp_path):
    evaluation = evaluate_table(scored, n_bootstrap=50, settings={"root": "tiny"})
    written = evaluation.write(tmp_path / "report")
    assert {"per_image", "metrics_csv", "metrics_json", "robustness", "confounds", "reliability",
            "operating_points", "report"} <= set(written)

    document = json.loads(written["metrics_json"].read_text())
    assert document["models"] == ["cnn"]
    assert {row["subset"] for row in document["metrics"]} == {ALL_IMAGES, "gan", "diffusion"}
    assert len(document["robustness"]) == 3
    assert document["settings"]["root"] == "tiny"
    metrics_csv = pd.read_csv(written["metrics_csv"])
    assert metrics_csv.loc[0, "n_real"] == 3 and metrics_csv.loc[0, "n_fake"] == 3

    page = written["report"].read_text()
    assert page.count("Plotly.newPlot") == len(evaluation.figures())
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert "plotly.js v" in page  # the library itself is inline
    assert "Confound check" in page and "Robustness table" in page
    assert "Provenance and stability per class" in page and "absent proves nothing" in page

    rebuilt = evaluate_table(read_per_image(written["per_image"]), n_bootstrap=50)
    pd.testing.assert_frame_equal(rebuilt.metrics, evaluation.metrics)
    pd.testing.assert_frame_equal(rebuilt.robustness, evaluation.robustness)


def test_report_shows_heatmaps_of_the_top_images_per_class(scored, random_cnn_weights,
                                                            tmp_path):
    pytest.importorskip("captum", reason="captum (the explain extra) is not installed")
    from deepfake_toolkit.explain import top_heatmaps

    evaluation = evaluate_table(scored, n_bootstrap=0)
    evaluation.heatmaps = top_heatmaps(evaluation.per_image, 1, tmp_path / "heatmaps",
                                       face_crop=False, weights_dir=random_cnn_weights)
    clean = scored[scored["perturbation"] == "none"]
    top = clean.loc[clean.groupby("true_label")["fake_score"].idxmax()]
    assert sorted(evaluation.heatmaps["path"]) == sorted(top["path"])
    np.testing.assert_allclose(
        evaluation.heatmaps.sort_values("path")["fake_score"],
        top.sort_values("path")["fake_score"], atol=1e-5)
    page = evaluation.write(tmp_path / "report")["report"].read_text()
    section = page.split("<h2>Heatmaps</h2>")[1].split("<h2>")[0]
    assert section.count('<img src="data:image/png;base64,') == 2


def test_operating_points_travel_through_the_per_image_csv(scored, tmp_path):
    points = fit_operating_points(scored, rule="fpr", target_fpr=0.34, calibration="platt",
                                  fitted_on="elsewhere")
    evaluation = evaluate_table(scored, points, n_bootstrap=0)
    path = evaluation.write(tmp_path)["per_image"]
    rebuilt = evaluate_table(read_per_image(path), n_bootstrap=0)
    assert rebuilt.operating_points == evaluation.operating_points
    np.testing.assert_allclose(rebuilt.per_image["calibrated_score"],
                               evaluation.per_image["calibrated_score"])


def test_evaluate_directory_fits_on_a_tuning_folder(tiny_folder, random_cnn_weights):
    evaluation = evaluate_directory(
        tiny_folder, "cnn", face_crop=False, threshold_rule="fpr", target_fpr=0.34,
        tune_on=tiny_folder, weights_dir=random_cnn_weights, progress=False,
        num_workers=0, n_bootstrap=0)
    point = evaluation.operating_points["cnn"]
    assert point.rule == "fpr" and point.fitted_on == str(tiny_folder)
    assert (point.n_real, point.n_fake) == (3, 3)
    assert not any("optimistic" in note for note in evaluation.notes)
    assert evaluation.overall.loc[0, "threshold"] == pytest.approx(point.threshold)
    with pytest.raises(ValueError, match="not both"):
        evaluate_directory(tiny_folder, "cnn", operating_points={}, calibration="platt")


# --------------------------------------------------------------------------------------------
# The loaded model's own operating point

def _labels_by_path(table: pd.DataFrame) -> dict[str, str]:
    clean = table[table["perturbation"] == "none"] if "perturbation" in table else table
    return dict(zip(clean["path"].map(str), clean["label"]))


@pytest.mark.parametrize("threshold, rule", [(None, "model"), (0.3, "user")])
def test_evaluate_labels_as_classify_does(graded_folder, thresholded_model, threshold, rule,
                                          tmp_path):
    from deepfake_toolkit.pipeline import classify_files

    options = dict(face_crop=False, weights_dir=thresholded_model, progress=False,
                   num_workers=0)
    files = label_files(graded_folder)["path"]
    classified = classify_files(files, THRESHOLDED_MODEL, threshold=threshold, **options)
    evaluation = evaluate_directory(graded_folder, THRESHOLDED_MODEL, threshold=threshold,
                                    n_bootstrap=0, **options)

    expected = OWN_THRESHOLD if threshold is None else threshold
    labels = _labels_by_path(evaluation.per_image)
    assert labels == _labels_by_path(classified)
    at_half = {p: "fake" if s >= 0.5 else "real"
               for p, s in zip(classified["path"].map(str), classified["fake_score"])}
    assert labels != at_half  # the toy scores make the threshold matter
    clean = evaluation.per_image[evaluation.per_image["perturbation"] == "none"]
    assert set(clean["label_rule"]) == set(classified["label_rule"]) == {
        f"threshold {expected:g} ({rule})"}
    point = evaluation.operating_points[THRESHOLDED_MODEL]
    assert (point.threshold, point.rule) == (pytest.approx(expected), rule)
    written = evaluation.write(tmp_path / "report")
    per_image = read_per_image(written["per_image"])
    assert per_image["threshold"].tolist() == pytest.approx([expected] * len(per_image))
    assert {json.loads(r)["rule"] for r in per_image["threshold_rule"]} == {rule}
    document = json.loads(written["metrics_json"].read_text())
    assert document["operating_points"][THRESHOLDED_MODEL]["rule"] == rule


def test_evaluate_loads_each_model_once(graded_folder, thresholded_model, monkeypatch):
    from deepfake_toolkit import models, pipeline

    loaded = []

    def counting_load(name="cnn", *args, **kwargs):
        loaded.append(name)
        return models.loading.load_model(name, *args, **kwargs)

    for module in (models, pipeline):
        monkeypatch.setattr(module, "load_model", counting_load)
    evaluation = evaluate_directory(
        graded_folder, THRESHOLDED_MODEL, face_crop=False, robustness=True,
        tune_on=graded_folder, threshold_rule="balanced_accuracy",
        weights_dir=thresholded_model, progress=False, num_workers=0, n_bootstrap=0)
    assert loaded == [THRESHOLDED_MODEL]
    assert set(evaluation.per_image["perturbation"]) == {"none", *(
        p.name for p in ROBUSTNESS_SUITE)}


# --------------------------------------------------------------------------------------------
# Command line


def test_cli_evaluate_through_a_subprocess(tiny_folder, random_cnn_weights, tmp_path):
    env = {**os.environ, "DEEPFAKE_TOOLKIT_WEIGHTS": str(random_cnn_weights),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    report = tmp_path / "report"
    command = [sys.executable, "-m", "deepfake_toolkit", "evaluate", str(tiny_folder),
               "-m", "cnn", "--labels", "folder", "--report", str(report),
               "--no-face-crop", "--quiet", "--bootstrap", "100"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cnn: AUC" in done.stdout
    for name in ("per_image.csv", "metrics.csv", "metrics.json", "operating_points.json",
                 "report.html"):
        assert (report / name).is_file(), name
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    overall = next(row for row in metrics if row["subset"] == ALL_IMAGES)
    assert (overall["n_real"], overall["n_fake"]) == (3, 3)

    # Rebuilt from the CSV alone, in-process (no model is loaded).
    assert cli.main(["evaluate", "--from-csv", str(report / "per_image.csv"), "--report",
                     str(tmp_path / "again"), "--bootstrap", "100"]) == 0
    rebuilt = json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"]
    assert rebuilt == metrics


def test_cli_fits_and_applies_operating_points(scored, tmp_path, capsys):
    csv = write_per_image(scored, tmp_path / "per_image.csv")
    assert cli.main(["evaluate", "--from-csv", str(csv), "--max-balanced", "--calibrate",
                     "temperature", "--report", str(tmp_path / "fit"), "--bootstrap", "0"]) == 0
    out = capsys.readouterr().out
    assert "optimistic" in out
    saved = tmp_path / "fit" / "operating_points.json"
    assert json.loads(saved.read_text())["models"]["cnn"]["rule"] == "balanced_accuracy"
    assert cli.main(["evaluate", "--from-csv", str(csv), "--operating-points", str(saved),
                     "--report", str(tmp_path / "applied"), "--bootstrap", "0"]) == 0
    fitted = pd.read_csv(tmp_path / "fit" / "metrics.csv")
    applied = pd.read_csv(tmp_path / "applied" / "metrics.csv")
    assert applied["threshold"].tolist() == pytest.approx(fitted["threshold"].tolist())


@pytest.mark.parametrize("arguments, message", [
    (["evaluate"], "give a folder of labelled images"),
    (["evaluate", "/no/such/folder"], "is not a folder"),
    (["evaluate", ".", "--from-csv", "x.csv"], "not both"),
    (["evaluate", ".", "--fpr", "5"], "--fpr must lie between 0 and 1"),
    (["evaluate", ".", "--tune-on", "."], "--tune-on needs something to fit"),
])
def test_cli_usage_errors(arguments, message, capsys):
    assert cli.main(arguments) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_cli_reports_a_bad_labels_csv(tiny_folder, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("name,truth\n")
    assert cli.main(["evaluate", str(tiny_folder), "--labels", str(labels), "--report",
                     str(tmp_path / "r")]) == cli.EXIT_USAGE
    assert "needs the columns path and label" in capsys.readouterr().err
