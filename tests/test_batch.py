"""The batch notebook through papermill, and `deepfake-toolkit batch` / `notebooks`."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from deepfake_toolkit.batch import BATCH_NOTEBOOK, notebook_path, run_names
from deepfake_toolkit.cli import main
from deepfake_toolkit.images import find_images
from deepfake_toolkit.results import COLUMNS, read_csv


def test_batch_notebook_has_one_parameters_cell_and_no_widgets() -> None:
    notebook = nbformat.read(notebook_path(BATCH_NOTEBOOK), as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("input_dir", "models", "face_crop", "threshold", "output_dir"):
        assert f"{name} = " in tagged[0].source
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "widgets" not in code and "Explorer" not in code


def test_run_names_are_unique_per_folder_and_model(tmp_path: Path) -> None:
    folders = [tmp_path / "a" / "images", tmp_path / "b" / "images", tmp_path / "c d"]
    assert run_names(folders, [["default"], ["x", "y"]]) == [
        "images__default", "images__x+y", "images__default_2", "images__x+y_2",
        "c_d__default", "c_d__x+y"]


@pytest.mark.usefixtures("notebook_env")
def test_batch_command_runs_the_notebook_per_folder(sample_folder: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    real, fake = tmp_path / "real", tmp_path / "fake"
    shutil.copytree(sample_folder / "real", real)
    fake.mkdir()
    for name in ("swap_grace_hopper_into_astronaut.png", "selfblend_astronaut.png"):
        shutil.copy(sample_folder / "fake" / name, fake / name)
    out = tmp_path / "out"

    status = main(["batch", str(real), str(fake), "-o", str(out), "--threshold", "0.5",
                   "--no-face", "skip", "--quiet"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "2 runs, 0 failed" in printed
    for folder in (real, fake):
        csv = out / f"{folder.name}__default.csv"
        table = read_csv(csv)
        assert list(table.columns) == list(COLUMNS)
        assert sorted(table["path"]) == sorted(str(p) for p in find_images(folder))
        scored = table["fake_score"].notna()
        assert set(table.loc[scored, "label"]) <= {"real", "fake"}
        assert set(table.loc[~scored, "label"]) <= {"no face"}
        executed = nbformat.read(out / f"{folder.name}__default.ipynb", as_version=4)
        injected = [c for c in executed.cells
                    if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and str(folder) in injected[0].source
        assert "no_face = \"skip\"" in injected[0].source
        outputs = "".join(str(o.get("text", "")) for c in executed.cells
                          for o in c.get("outputs", []))
        assert f"wrote {csv}" in outputs
    chelsea = read_csv(out / "real__default.csv")
    assert chelsea.loc[chelsea["path"].str.endswith("chelsea.png"), "label"].item() == "no face"
    runs = (out / "batch_runs.csv").read_text()
    assert runs.count(",ok,") == 2


def test_batch_command_refuses_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["batch", str(tmp_path / "missing"), "-o", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["batch", str(tmp_path), "-o", str(tmp_path / "o"), "-m", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_notebooks_command_copies_the_shipped_notebooks(tmp_path: Path) -> None:
    assert main(["notebooks", str(tmp_path / "nb")]) == 0
    copied = sorted(p.name for p in (tmp_path / "nb").iterdir())
    assert copied == ["01_quickstart.ipynb", "02_explore.ipynb", "03_evaluate.ipynb",
                      BATCH_NOTEBOOK]
    for name in copied:
        assert (tmp_path / "nb" / name).read_bytes() == notebook_path(name).read_bytes()
