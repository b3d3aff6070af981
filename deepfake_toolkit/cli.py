"""The ``deepfake-toolkit`` command line: a thin shell over the package's public functions."""

from __future__ import annotations

import argparse
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


def _add_serve(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "serve", help="serve the detector to the RescueBox desktop client (Flask-ML)",
        description="Serve the detector over HTTP with the Flask-ML protocol, so the RescueBox "
                    "desktop client can register it by host and port and score folders. The "
                    "server reads any folder a request names: keep it on 127.0.0.1 unless every "
                    "machine that can reach it may read this machine's files.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default: 5000)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run the models (default: auto = CUDA when available)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per inference batch (default: 32)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="decoding processes per request (default: chosen from the job size)")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files")
    return _run_serve


def _run_serve(args: argparse.Namespace) -> int:
    import logging

    if not 0 < args.port < 65536:
        raise UsageError("--port must lie between 1 and 65535")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    try:
        from .server import DetectorService, create_server
    except ImportError as exc:
        raise UsageError(f"the server needs Flask-ML ({exc}): install it with "
                         "pip install 'deepfake-toolkit[server]'") from None
    try:
        service = DetectorService(weights_dir=args.weights_dir, device=args.device,
                                  batch_size=args.batch_size, num_workers=args.workers)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach this port can have the "
              "server read any folder this account can read.", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = create_server(service)
    print(f"Serving the deepfake detector on http://{args.host}:{args.port} (device "
          f"{service.device}). In RescueBox Desktop, register a model with host {args.host} and "
          f"port {args.port}. Press Ctrl+C to stop.", flush=True)
    # No .env loading: it could change the working folder of a server that reads user paths.
    server.run(host=args.host, port=args.port, load_dotenv=False, threaded=True)
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Callable]] = [
    _add_classify, _add_models, _add_serve]
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
    from .models import UnknownModelError, WeightsMismatchError, WeightsNotFoundError

    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return runners[args.command](args)
    except (UsageError, UnknownModelError, WeightsNotFoundError, WeightsMismatchError,
            NotADirectoryError, ImageReadError) as exc:
        print(f"deepfake-toolkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
