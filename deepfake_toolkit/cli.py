"""The ``deepfake-toolkit`` command line: a thin shell over the package's public functions."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXIT_USAGE = 2
"""Exit status for a user error (missing folder, unknown model, missing weights)."""


class UsageError(Exception):
    """A mistake in the command line that the user can fix; printed without a traceback."""


def _add_classify(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "classify", help="score every image in a folder and write a CSV",
        description="Score every image in DIR with a model and write one CSV row per file "
                    "(per model). A score is evidence to weigh, not proof.")
    parser.add_argument("directory", metavar="DIR", help="folder of images")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="MODEL",
                        help="model to use (repeat for several; default: default). "
                             "See 'deepfake-toolkit models'.")
    parser.add_argument("-o", "--output", metavar="OUT.csv",
                        help="CSV to write (default: deepfake_scores.csv in the current folder)")
    parser.add_argument("--no-face-crop", action="store_true",
                        help="score whole images instead of face crops")
    parser.add_argument("--no-face", choices=["whole", "skip"], default="whole",
                        help="with face crop, what to do when no face is found: score the whole "
                             "image (default) or skip the file")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="label fake when fake_score >= T (default: the model's operating "
                             "threshold if it has one, else five score bands)")
    parser.add_argument("--bands", action="store_true",
                        help="label with the five score bands even if the model has a threshold")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (default: auto = CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per inference batch (default: 32)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="decoding processes (default: chosen from the job size)")
    parser.add_argument("--no-recursive", action="store_true", help="ignore sub-folders")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return _run_classify


def _run_classify(args: argparse.Namespace) -> int:
    from .images import find_images
    from .models import get_spec
    from .pipeline import classify_files
    from .results import summary

    directory = Path(args.directory).expanduser()
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a folder"
        raise UsageError(f"{directory} {what}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must lie between 0 and 1")
    models = args.models or ["default"]
    for name in models:
        get_spec(name)
    files = find_images(directory, recursive=not args.no_recursive)
    output = Path(args.output or "deepfake_scores.csv").expanduser()
    if not files:
        print(f"No image files found in {directory}.", file=sys.stderr)
    frame = classify_files(
        files, model=models, face_crop=not args.no_face_crop, no_face=args.no_face,
        threshold=args.threshold, bands=args.bands, batch_size=args.batch_size,
        device=args.device, num_workers=args.workers, weights_dir=args.weights_dir,
        output_csv=output, progress=not args.quiet)
    counts = summary(frame)
    rate = frame.attrs.get("images_per_second", float("nan"))
    print(f"{len(files)} files, {counts['scored']} scored, {counts['fakes']} labelled fake, "
          f"{counts['no_face']} without a face, {counts['errors']} errors, "
          f"{rate:.1f} images/s; wrote {output}")
    return 0


def _add_models(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser("models", help="list the models and whether their weights are "
                                                "present")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files")
    return _run_models


def _run_models(args: argparse.Namespace) -> int:
    from .models import get_spec, list_models, weights_available

    names = list_models()
    width = max(len(n) for n in names)
    for name in names:
        present = "weights present" if weights_available(name, args.weights_dir) else \
            "weights missing"
        print(f"{name:<{width}}  {present:<15}  {get_spec(name).description}")
    return 0


def _add_samples(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "samples", help="write a small labelled sample folder (real/ and fake/) to try the tools",
        description="Write real public-domain photos that ship with scikit-image and matplotlib "
                    "and fakes the toolkit makes from them (face swaps, self-blends, and GAN "
                    "faces when gan-face-generate is installed) into DIR/real and DIR/fake, "
                    "with README.txt and manifest.csv giving provenance and licences. Offline "
                    "and deterministic.")
    parser.add_argument("directory", metavar="DIR", help="folder to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--gan-faces", type=int, default=3, metavar="N",
                        help="GAN faces to add when gan-face-generate is installed (default: 3)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace DIR/real and DIR/fake if they exist")
    return _run_samples


def _run_samples(args: argparse.Namespace) -> int:
    from .samples import SAMPLES_MANIFEST, write_samples

    if args.gan_faces < 0:
        raise UsageError("--gan-faces must be 0 or more")
    folder = write_samples(args.directory, seed=args.seed, gan_faces=args.gan_faces,
                           overwrite=args.overwrite)
    with open(folder / SAMPLES_MANIFEST, newline="", encoding="utf-8") as manifest:
        labels = [row["label"] for row in csv.DictReader(manifest)]
    print(f"wrote {labels.count('real')} real and {labels.count('fake')} fake images to "
          f"{folder} (see {folder / 'README.txt'})")
    return 0


def _add_batch(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "batch", help="run the batch notebook over several folders and models (papermill)",
        description="Run notebooks/batch_classify.ipynb with papermill once per folder and "
                    "model. Each run leaves an executed notebook and a CSV in OUT; "
                    "OUT/batch_runs.csv lists the runs.")
    parser.add_argument("directories", nargs="+", metavar="DIR", help="folders of images")
    parser.add_argument("-o", "--output-dir", required=True, metavar="OUT",
                        help="folder for the executed notebooks and CSVs")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="MODEL",
                        help="model to use (repeat for several; default: default)")
    parser.add_argument("--models-together", action="store_true",
                        help="one run per folder with all models, instead of one per model")
    parser.add_argument("--no-face-crop", action="store_true",
                        help="score whole images instead of face crops")
    parser.add_argument("--no-face", choices=["whole", "skip"], default="whole",
                        help="with face crop, what to do when no face is found")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="label fake when fake_score >= T (default: the model's labels)")
    parser.add_argument("--kernel", metavar="NAME",
                        help="Jupyter kernel to run in (default: the notebook's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return _run_batch


def _run_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch
    from .models import get_spec, weights_available

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--threshold must lie between 0 and 1")
    for directory in args.directories:
        if not Path(directory).expanduser().is_dir():
            raise UsageError(f"{directory} is not a folder")
    models = args.models or ["default"]
    for name in models:
        get_spec(name)
        if not weights_available(name):
            raise UsageError(f"no weights for model '{name}': run 'deepfake-toolkit models' to "
                             "see which models have weights")
    runs = run_batch(args.directories, args.output_dir, models,
                     models_together=args.models_together, face_crop=not args.no_face_crop,
                     no_face=args.no_face, threshold=args.threshold, kernel_name=args.kernel,
                     progress=not args.quiet)
    for run in runs.itertuples():
        detail = run.csv if run.status == "ok" else run.error
        print(f"{run.status:<6}  {run.run_name}  {detail}")
    failed = int((runs["status"] != "ok").sum())
    print(f"{len(runs)} runs, {failed} failed; executed notebooks and CSVs in {args.output_dir}")
    return 1 if failed else 0


def _add_notebooks(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "notebooks", help="copy the tutorial and batch notebooks into a folder",
        description="Copy the notebooks that ship with the toolkit (quick start, explorer, "
                    "batch) into DIR, e.g. to open them in JupyterLab after a pip install.")
    parser.add_argument("directory", metavar="DIR", help="folder to copy into")
    parser.add_argument("--overwrite", action="store_true", help="replace notebooks already there")
    return _run_notebooks


def _run_notebooks(args: argparse.Namespace) -> int:
    from .batch import copy_notebooks

    for path in copy_notebooks(args.directory, overwrite=args.overwrite):
        print(path)
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Callable]] = [
    _add_classify, _add_models, _add_samples, _add_batch, _add_notebooks]
"""Functions that add a subcommand and return the function that runs it."""


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    """The argument parser and, per subcommand, the function that runs it."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="deepfake-toolkit",
        description="Score images for signs of being deepfakes. Scores are evidence to weigh, "
                    "not forensic proof.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {}
    for add in SUBCOMMANDS:
        runner = add(commands)
        runners[list(commands.choices)[-1]] = runner
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from .batch import NotebookNotFoundError
    from .images import ImageReadError
    from .models import UnknownModelError, WeightsMismatchError, WeightsNotFoundError
    from .samples import SamplesError

    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return runners[args.command](args)
    except (UsageError, UnknownModelError, WeightsNotFoundError, WeightsMismatchError,
            NotADirectoryError, ImageReadError, SamplesError, NotebookNotFoundError) as exc:
        print(f"deepfake-toolkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
