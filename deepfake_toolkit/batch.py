"""Batch runs of the parameterised notebook ``batch_classify.ipynb`` with papermill.

Each run classifies one folder with one model and leaves two files: the executed notebook (a
record of what ran, with its outputs) and the result CSV. The same run by hand::

    papermill batch_classify.ipynb out/case1__default.ipynb \\
        -p input_dir /data/case1 -y "models: [default]" -p output_dir out \\
        -p run_name case1__default -p face_crop True -p threshold 0.5

(``-y`` passes the list of models as YAML; ``-p`` would pass it as a string.)

Where the notebooks are: a wheel carries them inside the package (``deepfake_toolkit/notebooks``,
copied there at build time by setup.py); a source checkout or editable install uses the
project's ``notebooks/`` folder. :func:`notebook_path` looks in that order.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

BATCH_NOTEBOOK = "batch_classify.ipynb"
TUTORIAL_NOTEBOOKS: tuple[str, ...] = ("01_quickstart.ipynb", "02_explore.ipynb",
                                       "03_evaluate.ipynb")
NOTEBOOK_FOLDERS: tuple[Path, ...] = (
    Path(__file__).resolve().parent / "notebooks",
    Path(__file__).resolve().parents[1] / "notebooks",
)
"""Where notebooks are looked for: inside the installed package, then the project root."""
RUNS_INDEX = "batch_runs.csv"
"""Name of the table of runs written into the output folder."""


class NotebookNotFoundError(FileNotFoundError):
    """A notebook that should ship with the toolkit is missing."""


@dataclass(frozen=True)
class BatchRun:
    """One papermill run: a folder classified with some models.

    Attributes:
        input_dir: Folder classified.
        models: Models used, separated by "+".
        run_name: Stem of the run's files.
        notebook: The executed notebook.
        csv: The result CSV ("" when the run failed before writing it).
        status: "ok" or "failed".
        error: Why it failed, else "".
    """

    input_dir: str
    models: str
    run_name: str
    notebook: str
    csv: str
    status: str
    error: str


def notebook_path(name: str) -> Path:
    """The path of a notebook that ships with the toolkit (see the module docstring).

    Raises:
        NotebookNotFoundError: It is in none of :data:`NOTEBOOK_FOLDERS`.
    """
    for folder in NOTEBOOK_FOLDERS:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    searched = ", ".join(str(folder) for folder in NOTEBOOK_FOLDERS)
    raise NotebookNotFoundError(f"notebook {name} not found (looked in {searched}); reinstall "
                                "deepfake-toolkit from a complete checkout or wheel")


def copy_notebooks(destination: str | os.PathLike[str], overwrite: bool = False) -> list[Path]:
    """Copy the tutorial and batch notebooks into ``destination`` (for users of a wheel install).

    Args:
        destination: Folder to copy into (created if needed).
        overwrite: Replace notebooks already there (otherwise they are left alone).

    Returns:
        The notebooks now in ``destination`` that came from the toolkit.
    """
    target = Path(destination).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in (*TUTORIAL_NOTEBOOKS, BATCH_NOTEBOOK):
        out = target / name
        if overwrite or not out.exists():
            shutil.copyfile(notebook_path(name), out)
        copied.append(out)
    return copied


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "images"


def run_names(folders: Sequence[Path], model_groups: Sequence[Sequence[str]]) -> list[str]:
    """Unique file stems "<folder>__<models>" for every (folder, model group) run."""
    names: list[str] = []
    for folder in folders:
        for group in model_groups:
            base = f"{_slug(folder.name)}__{_slug('+'.join(group))}"
            name, count = base, 2
            while name in names:
                name, count = f"{base}_{count}", count + 1
            names.append(name)
    return names


def run_batch(
    folders: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    models: Sequence[str] = ("default",),
    *,
    models_together: bool = False,
    face_crop: bool | None = None,
    no_face: str | None = None,
    face_config: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    bands: bool | None = None,
    kernel_name: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run ``batch_classify.ipynb`` over every folder and model; one notebook and CSV per run.

    A failed run does not stop the others: its executed notebook (with the error) is kept and
    the returned table says what went wrong.

    Args:
        folders: Folders of images.
        output_dir: Where the executed notebooks, the CSVs and ``batch_runs.csv`` go.
        models: Model names; each gets its own run unless ``models_together``.
        models_together: One run per folder scoring with all ``models`` at once.
        face_crop, no_face, face_config, threshold, bands: Overrides of each model's scoring
            policy, as for :func:`~deepfake_toolkit.pipeline.classify_files` (None: the
            model's own); ``face_config`` is a mapping of the face-crop settings to change
            (it travels to the notebook as a papermill parameter).
        kernel_name: Jupyter kernel to run in (default: the notebook's, i.e. this Python).
        progress: Show papermill's cell progress bar.

    Returns:
        One row per run (the fields of :class:`BatchRun`), also written to
        ``output_dir/batch_runs.csv``.

    Raises:
        NotADirectoryError: A folder does not exist.
    """
    import papermill

    resolved = [Path(folder).expanduser().resolve() for folder in folders]
    for folder in resolved:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder of images")
    out = Path(output_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    groups = [list(models)] if models_together else [[model] for model in models]
    template = notebook_path(BATCH_NOTEBOOK)
    names = iter(run_names(resolved, groups))
    runs = []
    for folder in resolved:
        for group in groups:
            name = next(names)
            executed, csv = out / f"{name}.ipynb", out / f"{name}.csv"
            parameters = {"input_dir": str(folder), "models": group, "face_crop": face_crop,
                          "no_face": no_face, "face_config": dict(face_config or {}) or None,
                          "threshold": threshold, "bands": bands, "output_dir": str(out),
                          "run_name": name}
            csv.unlink(missing_ok=True)
            status, error = "ok", ""
            try:
                papermill.execute_notebook(
                    str(template), str(executed), parameters=parameters, cwd=str(out),
                    kernel_name=kernel_name, progress_bar=progress, log_output=False)
            except papermill.PapermillExecutionError as exc:
                status, error = "failed", f"{exc.ename}: {exc.evalue}"
            runs.append(BatchRun(str(folder), "+".join(group), name, str(executed),
                                 str(csv) if csv.is_file() else "", status, error))
    table = pd.DataFrame([asdict(run) for run in runs],
                         columns=list(BatchRun.__dataclass_fields__))
    table.to_csv(out / RUNS_INDEX, index=False)
    return table
