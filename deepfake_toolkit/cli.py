"""The ``deepfake-toolkit`` command line: a thin shell over the package's public functions."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
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


def _add_weights(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "weights", help="show which models have weights and how to get the others; import a "
                        "downloaded weight file",
        description="Without ACTION: list the weight folders, which models have their weights, "
                    "and for the others exactly what to download and where to put it. "
                    "'weights import FILE --model NAME' checks a downloaded file against its "
                    "model, converts it to safetensors and installs it.")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files (and installed into)")
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION")
    importer = actions.add_parser(
        "import", help="check, convert and install a downloaded weight file",
        description="Read FILE the way model NAME reads it (pickled checkpoints without running "
                    "their code), check that it fits the model exactly, and install it as "
                    "safetensors under the model's weight file name in the first weight folder "
                    "(--weights-dir, else $DEEPFAKE_TOOLKIT_WEIGHTS, else the project's "
                    "weights/). FILE itself is left in place.")
    importer.add_argument("file", metavar="FILE", help="the downloaded weight file")
    importer.add_argument("-m", "--model", required=True, metavar="NAME",
                          help="model the file is for (see 'deepfake-toolkit weights')")
    # SUPPRESS keeps a --weights-dir given before "import" from being reset to None.
    importer.add_argument("--weights-dir", metavar="DIR", default=argparse.SUPPRESS,
                          help="folder to install into")
    importer.add_argument("--force", action="store_true",
                          help="replace an installed file of the same name")
    return _run_weights


def _run_weights(args: argparse.Namespace) -> int:
    if args.weights_action == "import":
        return _run_weights_import(args)
    from .models import get_spec, list_models, weight_folders
    from .models.weights import WeightsNotFoundError, download_instructions, find_weight_file

    folders = weight_folders(args.weights_dir)
    print("Weight folders, searched in this order:")
    for folder in folders:
        print(f"  - {folder}")
    names = list_models()
    width = max(len(name) for name in names)
    missing = []
    print()
    for name in names:
        weight = get_spec(name).weights[0]
        try:
            print(f"{name:<{width}}  present  {find_weight_file(weight, name, args.weights_dir)}")
        except WeightsNotFoundError:
            print(f"{name:<{width}}  missing")
            missing.append(name)
    for name in missing:
        spec = get_spec(name)
        weight = spec.weights[0]
        names_text = " or ".join(weight.accepted_names)
        print(f"\n{name}: {spec.description}")
        print(f"  looked for: {names_text}")
        for line in download_instructions(weight):
            print(textwrap.fill(line, width=100, initial_indent="  ", subsequent_indent="    ",
                                break_on_hyphens=False, break_long_words=False))
    return 0


def _run_weights_import(args: argparse.Namespace) -> int:
    from .models import import_weights

    try:
        installed = import_weights(args.file, args.model, args.weights_dir, overwrite=args.force)
    except (FileNotFoundError, FileExistsError) as exc:
        raise UsageError(str(exc)) from None
    size_mb = installed.stat().st_size / 1e6
    print(f"{args.file} fits model '{args.model}': installed {installed} ({size_mb:.1f} MB).")
    print(f"'deepfake-toolkit classify DIR -m {args.model}' now uses it; {args.file} is no "
          "longer needed.")
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Callable]] = [
    _add_classify, _add_models, _add_weights]
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
    from .images import ImageReadError
    from .models import (
        UnknownModelError,
        WeightsFileError,
        WeightsMismatchError,
        WeightsNotFoundError,
    )

    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return runners[args.command](args)
    except (UsageError, UnknownModelError, WeightsNotFoundError, WeightsMismatchError,
            WeightsFileError, NotADirectoryError, ImageReadError) as exc:
        print(f"deepfake-toolkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
