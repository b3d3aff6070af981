"""A Flask-ML server that lets the RescueBox desktop client score folders of images.

The desktop client registers a server by host and port, reads ``GET /api/routes``,
``GET /api/app_metadata`` and ``GET /predict/task_schema``, and then sends
``POST /predict`` with ``{"inputs": {...}, "parameters": {...}}``. The task scores every image
in ``input_dataset`` with :func:`deepfake_toolkit.pipeline.classify_files` (the same pipeline as
the command line), writes the result table as a CSV with a new, unique name into the
``output_file`` folder, and answers with that CSV as a file response.

The ML function, :meth:`DetectorService.predict`, is a plain ``(inputs, parameters) -> response``
function over Flask-ML's pydantic types, so serving it from RescueBox's in-process plugin API
(rb-lib) only changes the imports and the registration call.

Example:
    >>> from deepfake_toolkit.server import DetectorService, create_server  # doctest: +SKIP
    >>> create_server(DetectorService(device="cpu")).run(port=5000)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
import uuid
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import torch
from flask import Response, request
from flask_ml.flask_ml_server import MLServer
from flask_ml.flask_ml_server.errors import BadRequestError
from flask_ml.flask_ml_server.models import (
    DirectoryInput,
    EnumParameterDescriptor,
    EnumVal,
    FileResponse,
    FileType,
    InputSchema,
    InputType,
    ParameterSchema,
    ResponseBody,
    TaskSchema,
    TextParameterDescriptor,
)

from .images import (
    IMAGE_EXTENSIONS,
    TooManyFilesError,
    VirtualFolderError,
    find_images,
    printable_path,
)
from .models import (
    Detector,
    UnknownModelError,
    WeightFile,
    WeightsFileError,
    WeightsMismatchError,
    WeightsNotFoundError,
    get_spec,
    list_models,
    load_model,
    resolve_device,
    weights_available,
)
from .models.loading import policy_summary
from .models.weights import find_weight_file
from .output import partial_path, record_path
from .pipeline import classify_files
from .results import OutputNotWritableError, summary
from .scoring import HELP

logger = logging.getLogger(__name__)

APP_NAME = "Image Deepfake Detector (deepfake_toolkit)"
TASK_RULE = "/predict"
ALL_MODELS = "all"
"""The ``models`` value that runs every registered model whose weights are present."""

OUTPUT_PREFIX = "deepfake_scores"
"""Start of every CSV name the server writes (then a timestamp and a random suffix)."""

DEFAULT_MAX_FILES = 20_000
"""Most image files one request may score; a larger folder is refused with a 400."""

MAX_REQUEST_BYTES = 64 * 1024
"""Largest request body the server reads (a real request is a few hundred bytes)."""

MAX_PATH_CHARACTERS = 4096
"""Longest folder path a request may give (PATH_MAX on Linux)."""

FACECROP_MODEL = "model"
"""The ``facecrop`` value that keeps each model's own region (its default)."""
BANDS_WORD = "bands"
"""The ``threshold`` value that labels with the five score bands."""
_TRUE_WORDS = ("true", "yes", "1")
_FALSE_WORDS = ("false", "no", "0")


class Inputs(TypedDict):
    """The task's inputs: the folder to score and the folder the CSV goes into."""

    input_dataset: DirectoryInput
    output_file: DirectoryInput


class Parameters(TypedDict):
    """The task's parameters, as the client sends them (all strings)."""

    models: str
    facecrop: str
    threshold: str


def create_task_schema() -> TaskSchema:
    """The ``/predict`` task as the desktop client draws it: two folders, three parameters.

    The ``models`` choices are read from the registry each time, so models registered after
    start-up appear too.
    """
    model_choices = [EnumVal(key=name, label=f"{name}: {get_spec(name).description}")
                     for name in list_models()]
    model_choices.append(EnumVal(key=ALL_MODELS,
                                 label="all: every model whose weights are installed"))
    return TaskSchema(
        inputs=[
            InputSchema(key="input_dataset", label="Folder of images to score",
                        subtitle="Sub-folders are included; the files are only read.",
                        input_type=InputType.DIRECTORY),
            InputSchema(key="output_file", label="Folder for the results CSV",
                        subtitle=f"A new file named {OUTPUT_PREFIX}_<time>_<id>.csv is written "
                                 "here; nothing else is changed.",
                        input_type=InputType.DIRECTORY),
        ],
        parameters=[
            ParameterSchema(
                key="models", label="Model",
                subtitle="Which detector scores the images ('all' runs every installed one).",
                value=EnumParameterDescriptor(enum_vals=model_choices, default=list_models()[0],
                                              message_when_empty="No models are registered.")),
            ParameterSchema(
                key="facecrop", label="Score the face crop or the whole image",
                subtitle=_sentence(f"{FACECROP_MODEL}: {HELP['face_crop'].split('; unset: ')[1]}"
                                   "; true: the face crop; false: the whole image. Images "
                                   "without a detected face are scored whole"),
                value=EnumParameterDescriptor(
                    enum_vals=[EnumVal(key=FACECROP_MODEL, label="as the model was trained"),
                               EnumVal(key="true", label="true"),
                               EnumVal(key="false", label="false")],
                    default=FACECROP_MODEL)),
            ParameterSchema(
                key="threshold", label="Fake threshold (optional)",
                subtitle=_sentence("A number T between 0 and 1: "
                                   f"{HELP['threshold'].replace('unset:', 'empty:')}; "
                                   f"'{BANDS_WORD}': {HELP['bands']}"),
                value=TextParameterDescriptor(default="")),
        ],
    )


def app_info_markdown(weights_dir: str | os.PathLike[str] | None = None) -> str:
    """The info page the desktop client shows for this server (markdown).

    Args:
        weights_dir: Folder searched first for weight files, to say which models are installed.
    """
    rows = []
    for name in list_models():
        installed = "yes" if weights_available(name, weights_dir) else "no"
        rows.append(f"| `{name}` | {get_spec(name).description} | {installed} | "
                    f"{policy_summary(name, weights_dir)} |")
    models_table = "\n".join(["| Model | What it is | Weights installed | Scores with |",
                              "|---|---|---|---|", *rows])
    return f"""# Image deepfake detector

Scores every image in a folder for signs of being a deepfake (face swap, face
re-enactment, or a fully generated face) and writes one CSV row per image and model.

## What the numbers mean
- **fake_score** is the model's probability that the image is fake, from 0 to 1, for
  every model. Higher means "more likely fake". It is not comparable between models
  without calibration on your own data.
- **label** turns the score into words, and `label_rule` says which rule did. With the
  threshold left empty, each model labels at its own operating threshold (*fake* when
  fake_score is at least it, else *real*; the table below gives each model's), or with the
  five score bands for a model without one; with a number T: {HELP['threshold'].split(';')[0]};
  with `{BANDS_WORD}`: {HELP['bands']}. *no face* and *error* mark files that were not
  scored; the `error` column says why.
- `facecrop` = `{FACECROP_MODEL}` (the default) scores each image {HELP['face_crop'].split('; unset: ')[1]}:
  the detected face (plus a margin), with `face_box` giving where it is; images without a
  face are scored whole (`region` = image). `true` and `false` force a face crop or the
  whole image.
- The provenance columns say what the file's own metadata claims: C2PA Content
  Credentials (`c2pa_status`, signer, digital source type; checked offline), XMP and
  EXIF fields, and image-generator parameters; `provenance_says_ai` sums them up.
  Absent metadata proves nothing (re-encoding strips it), and a valid C2PA signature
  proves who signed, not that the content is true.

## Models
{models_table}

`all` runs every model whose weights are installed and says in the result which were
skipped. Choosing a model whose weights are missing answers with the file it needs, the
folders searched and where to download it; `deepfake-toolkit models` lists which are
installed on the server's machine.

## Limits
A score is evidence to weigh, never proof. Detectors learn the generators they were
trained on and can miss new ones; recompression, resizing, screenshots, filters and
low resolution move scores in both directions; real photos can score high. Confirm
any finding by other means (source, metadata, context, an expert) before acting on it.

## Files
The input folder is only read. The CSV is written into the output folder under a new
name (`{OUTPUT_PREFIX}_<time>_<id>.csv`) and never overwrites another file.
"""


class DetectorService:
    """The state behind the task: settings, loaded models, and the lock that queues runs.

    Each model is loaded once per device and reused by later requests. Runs are queued, one at a
    time: a run already keeps every core (decoding workers plus inference threads) or the GPU
    busy, so two at once would only compete for them, and forking decoding workers while another
    run's inference threads are active is unsafe. Checking a request happens before the queue, so
    a bad request is answered at once.

    Args:
        weights_dir: Folder searched first for weight files (then $DEEPFAKE_TOOLKIT_WEIGHTS, then
            the project's weights/ folder).
        device: "auto" (CUDA when available), "cpu" or "cuda".
        batch_size: Images per inference batch.
        num_workers: Decoding processes per run; None picks one from the job size.
        max_files: Most image files one request may score; a request for a larger folder is
            refused before anything is scored.
    """

    def __init__(self, weights_dir: str | os.PathLike[str] | None = None,
                 device: str | torch.device = "auto", batch_size: int = 32,
                 num_workers: int | None = None, max_files: int = DEFAULT_MAX_FILES) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if max_files < 1:
            raise ValueError("max_files must be at least 1")
        self.max_files = max_files
        self.weights_dir = weights_dir
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._detectors: dict[tuple[str, str], Detector] = {}
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def detector(self, name: str) -> Detector:
        """Model ``name`` on this service's device, loaded on first use and then reused.

        Raises:
            UnknownModelError: No such model.
            WeightsNotFoundError: Its weight file is missing.
            WeightsMismatchError: Its weight file does not fit the model.
            WeightsFileError: Its weight file cannot be read, or was refused as unsafe.
        """
        key = (name, str(self.device))
        with self._load_lock:
            if key not in self._detectors:
                logger.info("loading model %s on %s", name, self.device)
                self._detectors[key] = load_model(name, weights_dir=self.weights_dir,
                                                  device=self.device)
            return self._detectors[key]

    def is_loaded(self, name: str) -> bool:
        """Whether model ``name`` is already loaded on this service's device."""
        return (name, str(self.device)) in self._detectors

    def predict(self, inputs: Inputs, parameters: Parameters,
                stop: threading.Event | None = None) -> ResponseBody:
        """Score every image in ``input_dataset`` and write the CSV into ``output_file``.

        Args:
            inputs: ``input_dataset`` (folder of images, searched recursively) and ``output_file``
                (existing folder the CSV is written into).
            parameters: ``models`` (a registered name or "all"), ``facecrop`` ("true"/"false")
                and ``threshold`` ("" for the score bands, else a number in [0, 1]).
            stop: Set this event to cancel the run (the server sets it when the client
                disconnects): it stops after the current batch and writes no CSV.

        Returns:
            A CSV file response; its subtitle counts the results and names skipped models.

        Raises:
            BadRequestError: The request cannot be run as given; the message says why and what
                to do (Flask-ML answers it with HTTP 400).
        """
        input_folder = _existing_folder(inputs["input_dataset"].path, "input_dataset",
                                        "folder of images")
        output_folder = _existing_folder(inputs["output_file"].path, "output_file",
                                         "folder for the results CSV")
        if not os.access(output_folder, os.W_OK | os.X_OK):
            raise BadRequestError(f"The output folder {printable_path(output_folder)} is not "
                                  "writable by the server: choose a folder you can write to.")
        face_crop = _parse_facecrop(parameters["facecrop"])
        threshold, bands = _parse_threshold(parameters["threshold"])
        names, skipped = self._choose_models(parameters["models"])
        try:
            files = find_images(input_folder, recursive=True, max_files=self.max_files)
        except TooManyFilesError as exc:
            raise BadRequestError(f"{exc} This server scores at most {self.max_files:,} images "
                                  "per request (its --max-files setting).") from None
        except VirtualFolderError as exc:
            raise BadRequestError(str(exc)) from None
        if not files:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise BadRequestError(
                f"No image files found in {printable_path(input_folder)} or its "
                f"sub-folders (looked for "
                f"{extensions}; hidden files are ignored). Choose the folder that holds the "
                "images.")
        detectors = [self._load_for_request(name) for name in names]

        output_csv = output_folder / unique_output_name()
        stop = stop or threading.Event()
        with self._run_lock:
            if stop.is_set():
                raise RunCancelledError("The request was cancelled before its run started.")
            logger.info("scoring %d files in %s with %s (face crop %s)", len(files),
                        printable_path(input_folder), ", ".join(names), face_crop)
            try:
                # Workers start from a fresh process, so they do not inherit the listening socket.
                frame = classify_files(files, model=detectors, face_crop=face_crop,
                                       threshold=threshold, bands=bands,
                                       batch_size=self.batch_size,
                                       device=self.device, num_workers=self.num_workers,
                                       output_csv=output_csv, progress=False, stop=stop,
                                       worker_start="forkserver" if os.name == "posix" else None)
            except OutputNotWritableError as exc:
                raise BadRequestError(f"{exc}.") from None
            finally:
                # A request writes its CSV and nothing else: no partial rows, and no record of
                # the settings (those are for resuming, which requests do not do).
                partial_path(output_csv).unlink(missing_ok=True)
                record_path(output_csv).unlink(missing_ok=True)
        if frame.attrs.get("stopped"):
            output_csv.unlink(missing_ok=True)
            raise RunCancelledError(f"The run was cancelled after {len(frame)} of {len(files)} "
                                    "images; no CSV was written.")
        counts = summary(frame)
        subtitle = (f"{len(files)} images; models: {', '.join(names)}; {counts['scored']} "
                    f"scores, {counts['fakes']} labelled fake, {counts['errors']} unreadable.")
        if skipped:
            subtitle += " Skipped: " + "; ".join(f"{name} ({why})"
                                                 for name, why in skipped.items())
        logger.info("wrote %s: %s", output_csv, subtitle)
        return ResponseBody(root=FileResponse(file_type=FileType.CSV, path=str(output_csv),
                                              title=f"Deepfake scores: {output_csv.name}",
                                              subtitle=subtitle))

    def _choose_models(self, requested: object) -> tuple[list[str], dict[str, str]]:
        """The models a ``models`` parameter selects, and the skipped ones with the reason."""
        known = list_models()
        if not isinstance(requested, str) or requested.strip() not in [*known, ALL_MODELS]:
            raise BadRequestError(f"Unknown model {requested!r}. Choose one of: "
                                  f"{', '.join([*known, ALL_MODELS])}.")
        requested = requested.strip()
        if requested != ALL_MODELS:
            self._require_weights(requested)
            return [requested], {}
        chosen: list[str] = []
        skipped: dict[str, str] = {}
        messages: list[str] = []
        for name in known:
            missing = self._missing_weights(name)
            if missing is None:
                chosen.append(name)
                continue
            weight, message = missing
            skipped[name] = f"weights not installed: {' or '.join(weight.accepted_names)}" + (
                f", download from {weight.url}" if weight.url else "")
            messages.append(message)
        if not chosen:
            raise BadRequestError("No model has its weights installed, so 'all' has nothing to "
                                  "run.\n\n" + "\n\n".join(messages))
        return chosen, skipped

    def _require_weights(self, name: str) -> None:
        missing = self._missing_weights(name)
        if missing is not None:
            raise BadRequestError(missing[1])

    def _missing_weights(self, name: str) -> tuple[WeightFile, str] | None:
        """None when model ``name`` can run, else its first missing weight file and a message
        saying where it was looked for and where to get it."""
        if self.is_loaded(name):
            return None
        for weight in get_spec(name).weights:
            try:
                find_weight_file(weight, name, self.weights_dir)
            except WeightsNotFoundError as exc:
                return weight, str(exc)
        return None

    def _load_for_request(self, name: str) -> Detector:
        try:
            return self.detector(name)
        except (UnknownModelError, WeightsNotFoundError, WeightsMismatchError,
                WeightsFileError) as exc:
            raise BadRequestError(str(exc)) from None


class RunCancelledError(BadRequestError):
    """A run was cancelled (its client disconnected); nothing was written."""


class DisconnectWatch:
    """Sets ``stop`` when the client at the other end of ``connection`` goes away.

    A thread peeks at the connection every ``interval`` seconds: an orderly close or a reset
    means the client will never read the answer, so its run is cancelled.

    Args:
        connection: The request's socket (the development server gives it as
            ``environ["werkzeug.socket"]``); None watches nothing.
        stop: The event to set.
        interval: Seconds between looks.
    """

    def __init__(self, connection: socket.socket | None, stop: threading.Event,
                 interval: float = 0.5) -> None:
        self.connection = connection
        self.stop = stop
        self.interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="deepfake-toolkit-disconnect-watch")

    def __enter__(self) -> DisconnectWatch:
        # MSG_DONTWAIT is POSIX; elsewhere runs cannot be cancelled this way.
        if self.connection is not None and hasattr(socket, "MSG_DONTWAIT"):
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._done.wait(self.interval):
            if _peer_closed(self.connection):
                logger.info("client disconnected: cancelling its run")
                self.stop.set()
                return


def _peer_closed(connection: socket.socket) -> bool:
    """Whether the other end closed or reset ``connection``, without reading from it."""
    hang_up = getattr(select, "POLLRDHUP", 0)
    if hang_up and hasattr(select, "poll"):
        # Linux reports the peer's close even while bytes it sent are still unread.
        poller = select.poll()
        poller.register(connection, hang_up | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def unique_output_name(now: datetime | None = None) -> str:
    """A CSV file name no other request gets: prefix, local time, and 12 random hex digits."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{OUTPUT_PREFIX}_{stamp}_{uuid.uuid4().hex[:12]}.csv"


def _existing_folder(raw_path: str, key: str, what: str) -> Path:
    if not raw_path.strip():
        raise BadRequestError(f"No {what} given ({key} is empty): choose a folder.")
    if len(raw_path) > MAX_PATH_CHARACTERS or "\x00" in raw_path:
        raise BadRequestError(f"The {what} ({key}) is not a usable path: it is longer than "
                              f"{MAX_PATH_CHARACTERS} characters or holds a NUL character.")
    folder = Path(raw_path).expanduser()
    shown = printable_path(folder)
    if not folder.is_absolute():
        raise BadRequestError(
            f"The {what} '{shown}' ({key}) is not a full path: give it from the top, e.g. "
            "/home/me/case/images or C:\\case\\images.")
    try:
        exists, is_dir = folder.exists(), folder.is_dir()
    except OSError as exc:
        raise BadRequestError(f"The {what} {shown} ({key}) cannot be checked "
                              f"({exc.strerror or exc}): check the path.") from None
    if not exists:
        raise BadRequestError(f"The {what} {shown} ({key}) does not exist: check the path or "
                              "create the folder first.")
    if not is_dir:
        raise BadRequestError(f"The {what} {shown} ({key}) is a file, not a folder: choose "
                              "the folder instead.")
    return folder


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def _parse_facecrop(value: object) -> bool | None:
    """None (the model's own region), True or False."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in (FACECROP_MODEL, ""):
        return None
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise BadRequestError(f"facecrop must be '{FACECROP_MODEL}', 'true' or 'false', not "
                          f"{value!r}.")


def _parse_threshold(value: object) -> tuple[float | None, bool | None]:
    """(user threshold, bands): empty keeps the model's own label rule."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, str) and value.strip().lower() == BANDS_WORD:
        return None, True
    if isinstance(value, bool):
        value = str(value).lower()
    try:
        threshold = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise BadRequestError(f"threshold must be empty (the model's own operating threshold), "
                              f"'{BANDS_WORD}' or a number between 0 and 1, not {value!r}.")
    return threshold, None


def create_server(service: DetectorService | None = None) -> MLServer:
    """A Flask-ML server with the app metadata and the ``/predict`` task.

    Args:
        service: The detector service that runs the task (default: one on the default device,
            with the default weight folders).

    Returns:
        The server; ``server.app`` is the Flask app (for a test client or a WSGI server) and
        ``server.run(host, port)`` serves it.
    """
    from . import __version__

    service = service or DetectorService()
    server = MLServer(__name__)
    server.app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    server.app.before_request(_check_task_request)
    server.app.after_request(_hide_internal_errors)
    server.add_app_metadata(name=APP_NAME, author="deepfake_toolkit contributors",
                            version=__version__, info=app_info_markdown(service.weights_dir))

    def predict(inputs: Inputs, parameters: Parameters) -> ResponseBody:
        stop = threading.Event()
        with DisconnectWatch(request.environ.get("werkzeug.socket"), stop):
            return service.predict(inputs, parameters, stop=stop)

    server.route(TASK_RULE, task_schema_func=create_task_schema,
                 short_title="Deepfake detection", order=0)(predict)
    return server


def _client_error(message: str) -> Response:
    """A 400 answer in Flask-ML's error form."""
    return Response(json.dumps({"error": message, "status": "VALIDATION_ERROR"}), status=400,
                    mimetype="application/json")


def _check_task_request() -> Response | None:
    """Answer a malformed ``POST /predict`` with a 400 saying what is wrong, before Flask-ML's
    handler (which would answer it with a 500) sees it; None lets a well-formed request on."""
    if request.method != "POST" or request.path != TASK_RULE:
        return None
    if not request.is_json:
        return _client_error("The request body must be JSON (Content-Type: application/json) "
                             'of the form {"inputs": {...}, "parameters": {...}}.')
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        return _client_error(f"The request body is larger than {MAX_REQUEST_BYTES:,} bytes; a "
                             "task request is a few hundred.")
    try:
        body = request.get_json()
    except RecursionError:
        return _client_error("The request body is nested too deeply to be a task request.")
    except Exception as exc:  # noqa: BLE001 - werkzeug's BadRequest, a too-large body, ...
        too_large = getattr(exc, "code", None) == 413
        return _client_error(f"The request body is larger than {MAX_REQUEST_BYTES:,} bytes."
                             if too_large else "The request body is not valid JSON.")
    problem = _request_problem(body)
    return _client_error(problem) if problem else None


def _request_problem(body: object) -> str | None:
    """What is wrong with the shape of a task request, or None."""
    example = ('{"inputs": {"input_dataset": {"path": "..."}, "output_file": {"path": "..."}}, '
               '"parameters": {"models": "...", "facecrop": "...", "threshold": "..."}}')
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict) \
            or not isinstance(body.get("parameters"), dict):
        return f"The request must be a JSON object of the form {example}."
    for key in Inputs.__annotations__:
        value = body["inputs"].get(key)
        if not isinstance(value, dict) or not isinstance(value.get("path"), str):
            return f'inputs.{key} must be an object with a "path" string, as in {example}.'
        if len(value["path"]) > MAX_PATH_CHARACTERS:
            return f"inputs.{key}.path is longer than {MAX_PATH_CHARACTERS} characters."
    for key, value in body["parameters"].items():
        if not isinstance(value, (str, bool, int, float)) or (
                isinstance(value, str) and len(value) > MAX_PATH_CHARACTERS):
            return f"parameters.{str(key)[:40]!r} must be a short string."
    return None


def _hide_internal_errors(response: Response) -> Response:
    """Answer every 500 with a generic message: the details (a traceback, paths of the
    installation) go to the server log, never to the client."""
    if response.status_code < 500:
        return response
    reference = uuid.uuid4().hex[:12]
    logger.error("answered %s with HTTP %d (reference %s); the cause is logged above",
                 request.path, response.status_code, reference)
    return Response(json.dumps({
        "error": "The server failed while running the task. This is not a problem with your "
                 f"request; the server's log has the details (reference {reference}).",
        "status": "SERVER_ERROR"}), status=response.status_code, mimetype="application/json")
