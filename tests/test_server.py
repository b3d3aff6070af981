"""The Flask-ML server: every route through Flask's test client, then a real server process driven
over HTTP the way the RescueBox desktop client drives it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from deepfake_toolkit import __version__, classify_files, find_images, list_models, read_csv
from deepfake_toolkit.models import register_model, unregister_model, weights_available
from deepfake_toolkit.results import Bands
from deepfake_toolkit.server import (
    ALL_MODELS,
    APP_NAME,
    OUTPUT_PREFIX,
    DetectorService,
    create_server,
)
from .serve_with_extra_model import (
    UNWEIGHTED_FILE,
    UNWEIGHTED_MODEL,
    UNWEIGHTED_URL,
    unweighted_spec,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_NAME = re.compile(rf"^{OUTPUT_PREFIX}_\d{{8}}-\d{{6}}_[0-9a-f]{{12}}\.csv$")
BAND_LABELS = {"likely fake", "weakly fake", "uncertain", "weakly real", "likely real"}


@dataclass(frozen=True)
class Folders:
    """Generated inputs: two folders of tiny images, one without images, one for bad requests."""

    images: Path
    other_images: Path
    no_images: Path
    bad_output: Path
    faces: Path


def _noise_images(folder: Path, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (24 + 4 * index, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, astronaut: Image.Image) -> Folders:
    base = tmp_path_factory.mktemp("server")
    found = Folders(images=base / "images", other_images=base / "other", no_images=base / "empty",
                    bad_output=base / "bad-output", faces=base / "faces")
    for folder in (found.images, found.other_images, found.no_images, found.bad_output,
                   found.faces):
        folder.mkdir()
    _noise_images(found.images, 3, seed=1)
    (found.images / "sub").mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(found.images / "sub" / "grey.jpg")
    (found.images / "notes.txt").write_text("not an image")
    _noise_images(found.other_images, 2, seed=2)
    (found.no_images / "notes.txt").write_text("not an image")
    astronaut.resize((256, 256)).save(found.faces / "astronaut.jpg")
    return found


@pytest.fixture(scope="module")
def unweighted_model():
    """A registered model whose weight file is nowhere, as in the real server process."""
    register_model(unweighted_spec())
    yield UNWEIGHTED_MODEL
    unregister_model(UNWEIGHTED_MODEL)


@pytest.fixture(scope="module")
def service(random_cnn_weights: Path, unweighted_model: str) -> DetectorService:
    return DetectorService(weights_dir=random_cnn_weights, device="cpu", num_workers=0)


@pytest.fixture(scope="module")
def client(service: DetectorService):
    return create_server(service).app.test_client()


def payload(input_dataset: Path | str, output_file: Path | str, models: str = "cnn",
            facecrop: str = "false", threshold: str = "") -> dict[str, Any]:
    return {"inputs": {"input_dataset": {"path": str(input_dataset)},
                       "output_file": {"path": str(output_file)}},
            "parameters": {"models": models, "facecrop": facecrop, "threshold": threshold}}


def fingerprints(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- every route through Flask's test client ---------------------------------------------------

def test_app_metadata_describes_scores_models_and_limits(client) -> None:
    response = client.get("/api/app_metadata")
    assert response.status_code == 200
    metadata = response.get_json()
    assert metadata["name"] == APP_NAME
    assert metadata["version"] == __version__
    info = metadata["info"]
    assert "fake_score" in info and "probability that the image is fake" in info
    assert "never proof" in info
    for label in BAND_LABELS:
        assert label in info
    assert "| `default` |" in info and "| yes |" in info
    assert f"| `{UNWEIGHTED_MODEL}` |" in info and "| no |" in info


def test_routes_list_the_predict_task(client) -> None:
    response = client.get("/api/routes")
    assert response.status_code == 200
    assert response.get_json() == [{
        "run_task": "/predict", "task_schema": "/predict/task_schema",
        "sample_payload": "/predict/sample_payload", "payload_schema": "/predict/payload_schema",
        "short_title": "Deepfake detection", "order": 0}]


def test_task_schema_has_the_original_inputs_and_parameters(client) -> None:
    schema = client.get("/predict/task_schema").get_json()
    assert [(i["key"], i["input_type"]) for i in schema["inputs"]] == [
        ("input_dataset", "directory"), ("output_file", "directory")]
    parameters = {p["key"]: p["value"] for p in schema["parameters"]}
    assert list(parameters) == ["models", "facecrop", "threshold"]
    assert parameters["models"]["parameter_type"] == "enum"
    assert [v["key"] for v in parameters["models"]["enum_vals"]] == [*list_models(), ALL_MODELS]
    assert parameters["facecrop"]["parameter_type"] == "enum"
    assert [v["key"] for v in parameters["facecrop"]["enum_vals"]] == ["model", "true", "false"]
    assert parameters["facecrop"]["default"] == "model"
    assert parameters["threshold"] == {"parameter_type": "text", "default": ""}


def test_sample_payload_and_payload_schema_match_the_task(client) -> None:
    sample = client.get("/predict/sample_payload").get_json()
    assert set(sample["inputs"]) == {"input_dataset", "output_file"}
    assert all("path" in value for value in sample["inputs"].values())
    assert sample["parameters"] == {"models": "default", "facecrop": "model", "threshold": ""}
    schema = client.get("/predict/payload_schema").get_json()
    assert schema["title"] == "RequestBody"
    assert set(schema["required"]) == {"inputs", "parameters"}


def test_predict_writes_the_pipelines_csv_and_leaves_inputs_alone(
        client, service: DetectorService, folders: Folders, tmp_path: Path) -> None:
    before = fingerprints(folders.images)
    response = client.post("/predict", json=payload(folders.images, tmp_path))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["output_type"] == "file" and body["file_type"] == "csv"
    written = Path(body["path"])
    assert written.parent == tmp_path and OUTPUT_NAME.match(written.name)
    assert [p.name for p in tmp_path.iterdir()] == [written.name]
    assert "4 images" in body["subtitle"] and "cnn" in body["subtitle"]
    assert fingerprints(folders.images) == before

    table = read_csv(written)
    files = find_images(folders.images)
    assert table["path"].tolist() == [str(f) for f in files]
    assert set(table["model"]) == {"cnn"}
    assert table["region"].eq("image").all() and not table["face_crop"].any()
    assert table["label"].isin(BAND_LABELS).all()
    assert table["label"].tolist() == [Bands()(s) for s in table["fake_score"]]
    direct = classify_files(files, model=service.detector("cnn"), face_crop=False,
                            num_workers=0, progress=False)
    np.testing.assert_allclose(table["fake_score"], direct["fake_score"], atol=1e-9)


def test_csv_carries_each_files_provenance(client, folders: Folders, tmp_path: Path) -> None:
    from deepfake_toolkit.provenance import PROVENANCE_COLUMNS, read_provenance

    response = client.post("/predict", json=payload(folders.images, tmp_path))
    assert response.status_code == 200, response.get_json()
    table = read_csv(response.get_json()["path"])
    for row in table.to_dict("records"):
        expected = read_provenance(row["path"])
        assert {c: row[c] for c in PROVENANCE_COLUMNS} == expected
    assert (table["c2pa_status"] == "none").all()


def test_threshold_gives_fake_and_real_labels(client, folders: Folders, tmp_path: Path) -> None:
    response = client.post("/predict", json=payload(folders.images, tmp_path, threshold="0.5"))
    assert response.status_code == 200, response.get_json()
    table = read_csv(response.get_json()["path"])
    expected = ["fake" if s >= 0.5 else "real" for s in table["fake_score"]]
    assert table["label"].tolist() == expected


def test_facecrop_scores_the_detected_face(client, service: DetectorService, folders: Folders,
                                          tmp_path: Path) -> None:
    response = client.post("/predict", json=payload(folders.faces, tmp_path, facecrop="true"))
    assert response.status_code == 200, response.get_json()
    row = read_csv(response.get_json()["path"]).iloc[0]
    assert row["face_crop"] and row["face_found"] and row["region"] == "face"
    # The score is the model's score of the crop around the reported face box.
    from deepfake_toolkit.faces import crop_window

    detector = service.detector("cnn")
    image = Image.open(folders.faces / "astronaut.jpg").convert("RGB")
    crop = image.crop(crop_window(row["face_box"], image.size, detector.scoring.face))
    assert row["fake_score"] == pytest.approx(detector.predict_images([crop])[0], abs=2e-3)


def test_all_runs_installed_models_and_names_the_skipped(client, folders: Folders,
                                                         tmp_path: Path) -> None:
    response = client.post("/predict", json=payload(folders.other_images, tmp_path,
                                                    models=ALL_MODELS))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    # The models with a CLIP branch run where the tower is in a weight folder (make test fetches
    # it); cnn's weights are in the service's weight folder.
    installed = {name for name in ("clip_probe", "cnn_clip_fusion", "default")
                 if weights_available(name)}
    assert set(read_csv(body["path"])["model"]) == {"cnn"} | installed
    # Other registered models without weights are skipped too, so only this entry is checked.
    assert "Skipped: " in body["subtitle"]
    assert f"{UNWEIGHTED_MODEL} (weights not installed: {UNWEIGHTED_FILE}" in body["subtitle"]
    assert UNWEIGHTED_URL in body["subtitle"]


def test_each_model_is_loaded_once(random_cnn_weights: Path, folders: Folders,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepfake_toolkit.server as server_module

    loads: list[str] = []
    real_load = server_module.load_model

    def counting_load(name: str, **options: Any):
        loads.append(name)
        return real_load(name, **options)

    monkeypatch.setattr(server_module, "load_model", counting_load)
    fresh = DetectorService(weights_dir=random_cnn_weights, device="cpu", num_workers=0)
    test_client = create_server(fresh).app.test_client()
    for _ in range(2):
        response = test_client.post("/predict", json=payload(folders.other_images, tmp_path))
        assert response.status_code == 200, response.get_json()
    assert loads == ["cnn"]
    assert fresh.detector("cnn") is fresh.detector("cnn")


BadCase = Callable[[Folders], dict[str, Any]]
BAD_REQUESTS: dict[str, tuple[BadCase, tuple[str, ...]]] = {
    "input folder missing": (
        lambda f: payload(f.images / "no-such-folder", f.bad_output),
        ("folder of images", "does not exist")),
    "input is a file": (
        lambda f: payload(f.images / "img0.png", f.bad_output),
        ("is a file, not a folder",)),
    "input has no images": (
        lambda f: payload(f.no_images, f.bad_output),
        ("No image files found in", ".png")),
    "input path relative": (
        lambda f: payload("images", f.bad_output),
        ("not a full path",)),
    "output folder missing": (
        lambda f: payload(f.images, f.bad_output / "no-such-folder"),
        ("folder for the results CSV", "does not exist")),
    "output is a file": (
        lambda f: payload(f.images, f.images / "notes.txt"),
        ("is a file, not a folder",)),
    "unknown model": (
        lambda f: payload(f.images, f.bad_output, models="bnext_xxl"),
        ("Unknown model 'bnext_xxl'", "Choose one of: default")),
    "weights missing": (
        lambda f: payload(f.images, f.bad_output, models=UNWEIGHTED_MODEL),
        (f"Weights for model '{UNWEIGHTED_MODEL}' not found", UNWEIGHTED_FILE,
         f"Download it from {UNWEIGHTED_URL}")),
    "facecrop not true/false": (
        lambda f: payload(f.images, f.bad_output, facecrop="maybe"),
        ("facecrop must be 'model', 'true' or 'false'",)),
    "threshold out of range": (
        lambda f: payload(f.images, f.bad_output, threshold="1.5"),
        ("threshold must be empty", "between 0 and 1")),
    "threshold not a number": (
        lambda f: payload(f.images, f.bad_output, threshold="high"),
        ("threshold must be empty",)),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_400_with_a_readable_message(client, folders: Folders, case: str) -> None:
    make_payload, phrases = BAD_REQUESTS[case]
    response = client.post("/predict", json=make_payload(folders))
    assert response.status_code == 400
    message = response.get_json()["error"]
    assert isinstance(message, str)
    for phrase in phrases:
        assert phrase in message
    assert list(folders.bad_output.iterdir()) == []


# --- a real server process, driven like the desktop client --------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    log: Path

    def get(self, route: str) -> Any:
        with urllib.request.urlopen(self.url + route, timeout=30) as answer:
            return json.load(answer)

    def post(self, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + route, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)


@pytest.fixture(scope="module")
def http_server(random_cnn_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    """``python -m deepfake_toolkit serve`` on a free port (plus one registered model without
    weights), stopped when the module's tests are done."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    env = {**os.environ, "DEEPFAKE_TOOLKIT_WEIGHTS": str(random_cnn_weights),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as log_stream:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("serve_with_extra_model.py")), "serve",
             "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            cwd=REPO_ROOT, env=env, stdout=log_stream, stderr=subprocess.STDOUT)
    server = RunningServer(url=f"http://127.0.0.1:{port}", log=log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                server.get("/api/routes")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"server did not answer within 120 s:\n{log.read_text()}")
                time.sleep(0.25)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _request_from_schema(schema: dict[str, Any], values: dict[str, str],
                         parameters: dict[str, str]) -> dict[str, Any]:
    """Build a request as the desktop client does: a path per input, each parameter's default
    unless the user changed it."""
    return {"inputs": {i["key"]: {"path": values[i["key"]]} for i in schema["inputs"]},
            "parameters": {p["key"]: parameters.get(p["key"], p["value"]["default"])
                           for p in schema["parameters"]}}


def test_desktop_client_sequence_over_http(http_server: RunningServer, folders: Folders,
                                           tmp_path: Path) -> None:
    routes = http_server.get("/api/routes")
    task = next(route for route in routes if route["run_task"] == "/predict")
    metadata = http_server.get("/api/app_metadata")
    assert metadata["name"] == APP_NAME and "fake_score" in metadata["info"]
    schema = http_server.get(task["task_schema"])
    request = _request_from_schema(
        schema, {"input_dataset": str(folders.images), "output_file": str(tmp_path)},
        {"facecrop": "false"})
    status, body = http_server.post(task["run_task"], request)
    assert status == 200, body
    table = read_csv(body["path"])
    assert Path(body["path"]).parent == tmp_path
    assert table["path"].tolist() == [str(f) for f in find_images(folders.images)]
    assert table["fake_score"].between(0, 1).all()


def test_two_requests_at_once_get_complete_distinct_csvs(http_server: RunningServer,
                                                         folders: Folders,
                                                         tmp_path: Path) -> None:
    jobs = {"images": folders.images, "other": folders.other_images}
    answers: dict[str, tuple[int, Any]] = {}

    def send(name: str, folder: Path) -> None:
        answers[name] = http_server.post("/predict", payload(folder, tmp_path))

    threads = [threading.Thread(target=send, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert set(answers) == set(jobs)
    paths = {name: Path(body["path"]) for name, (status, body) in answers.items()
             if status == 200}
    assert len(paths) == 2, answers
    assert paths["images"] != paths["other"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    for name, folder in jobs.items():
        table = read_csv(paths[name])
        assert table["path"].tolist() == [str(f) for f in find_images(folder)]
        assert table["fake_score"].notna().all()


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_over_http_is_400(http_server: RunningServer, folders: Folders,
                                      case: str) -> None:
    make_payload, phrases = BAD_REQUESTS[case]
    status, body = http_server.post("/predict", make_payload(folders))
    assert status == 400
    for phrase in phrases:
        assert phrase in body["error"]
    assert list(folders.bad_output.iterdir()) == []


# --- hostile requests -------------------------------------------------------------------------

RawRequest = Callable[[Folders], dict[str, Any]]


def _raw(data: str | bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"data": data, "content_type": content_type}


def _with_input(value: Any) -> RawRequest:
    def build(f: Folders) -> dict[str, Any]:
        body = payload(f.images, f.bad_output)
        body["inputs"]["input_dataset"] = value
        return {"json": body}
    return build


HOSTILE_REQUESTS: dict[str, tuple[RawRequest, str]] = {
    "malformed JSON": (lambda f: _raw('{"inputs": {'), "not valid JSON"),
    "text/plain body": (lambda f: _raw(json.dumps(payload(f.images, f.bad_output)),
                                       "text/plain"), "must be JSON"),
    "body is a list": (lambda f: {"json": [1, 2]}, "must be a JSON object"),
    "body is null": (lambda f: _raw("null"), "must be a JSON object"),
    "input given as a string": (_with_input("/tmp"), "inputs.input_dataset must be an object"),
    "input path is a number": (_with_input({"path": 7}), "inputs.input_dataset must be an object"),
    "1 MB path": (lambda f: {"json": payload("/" + "a" * 1_000_000, f.bad_output)},
                  "larger than 65,536 bytes"),
    "5000-character path": (lambda f: {"json": payload("/" + "a" * 5000, f.bad_output)},
                            "longer than 4096 characters"),
    "deeply nested JSON": (lambda f: _raw("[" * 20_000 + "]" * 20_000), "nested too deeply"),
    "nested parameter": (lambda f: {"json": payload(f.images, f.bad_output,
                                                    models=[[["default"]]])},  # type: ignore
                         "must be a short string"),
    "NUL in a path": (lambda f: {"json": payload(f"{f.images}\x00x", f.bad_output)},
                      "NUL character"),
    "parameters missing": (lambda f: {"json": {"inputs": payload(f.images, f.bad_output)[
        "inputs"], "parameters": {}}}, "parameter"),
    "/proc as input": (lambda f: {"json": payload("/proc", f.bad_output)},
                       "virtual file system"),
    "/sys as input": (lambda f: {"json": payload("/sys", f.bad_output)}, "virtual file system"),
}


def _assert_clean_400(status: int, body: Any, phrase: str) -> None:
    assert status == 400, body
    message = body["error"]
    assert isinstance(message, str) and phrase in message
    assert "Traceback" not in message and 'File "' not in message and "site-packages" not in message


@pytest.mark.parametrize("case", list(HOSTILE_REQUESTS))
def test_hostile_request_is_400_without_internals(client, folders: Folders, case: str) -> None:
    make_request, phrase = HOSTILE_REQUESTS[case]
    response = client.post("/predict", **make_request(folders))
    _assert_clean_400(response.status_code, response.get_json(), phrase)
    assert list(folders.bad_output.iterdir()) == []


def test_unwritable_output_folder_is_400_before_anything_is_scored(
        client, folders: Folders, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfake_toolkit import pipeline

    def must_not_score(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("scoring started before the output folder was checked")

    monkeypatch.setattr(pipeline, "load_detectors", must_not_score)
    response = client.post("/predict", json=payload(folders.images, "/proc"))
    assert response.status_code == 400, response.get_json()
    assert re.search("cannot write the CSV into /proc|not writable", response.get_json()["error"])


def test_more_files_than_the_limit_is_400(random_cnn_weights: Path, folders: Folders) -> None:
    limited = DetectorService(weights_dir=random_cnn_weights, device="cpu", num_workers=0,
                              max_files=2)
    response = create_server(limited).app.test_client().post(
        "/predict", json=payload(folders.images, folders.bad_output))
    _assert_clean_400(response.status_code, response.get_json(), "more than 2 image files")
    assert "at most 2 images per request" in response.get_json()["error"]


def test_internal_failure_is_a_generic_500_with_details_only_in_the_log(
        client, folders: Folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import deepfake_toolkit.server as server_module

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret detail at /usr/lib/python3/site-packages/x.py")

    monkeypatch.setattr(server_module, "classify_files", broken)
    with caplog.at_level("ERROR"):
        response = client.post("/predict", json=payload(folders.images, tmp_path))
    assert response.status_code == 500
    body = response.get_json()
    assert body["status"] == "SERVER_ERROR" and "server's log" in body["error"]
    assert "secret" not in response.get_data(as_text=True)
    assert "RuntimeError" not in response.get_data(as_text=True)
    reference = re.search(r"reference ([0-9a-f]{12})", body["error"]).group(1)
    assert "secret detail" in caplog.text and reference in caplog.text


def test_serve_max_files_default_is_the_servers() -> None:
    from deepfake_toolkit.cli import build_parser
    from deepfake_toolkit.server import DEFAULT_MAX_FILES

    parser, _ = build_parser()
    assert parser.parse_args(["serve"]).max_files == DEFAULT_MAX_FILES


@pytest.mark.parametrize("case", ["malformed JSON", "text/plain body", "deeply nested JSON",
                                  "1 MB path", "/proc as input"])
def test_hostile_request_over_http_is_400(http_server: RunningServer, folders: Folders,
                                          case: str) -> None:
    make_request, phrase = HOSTILE_REQUESTS[case]
    options = make_request(folders)
    if "json" in options:
        options = _raw(json.dumps(options["json"]))
    data = options["data"]
    request = urllib.request.Request(
        http_server.url + "/predict", data=data.encode() if isinstance(data, str) else data,
        headers={"Content-Type": options["content_type"]})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            status, body = answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        status, body = error.code, json.load(error)
    _assert_clean_400(status, body, phrase)


def test_disconnect_watch_sets_stop_only_when_the_client_goes() -> None:
    from deepfake_toolkit.server import DisconnectWatch

    server_side, client_side = socket.socketpair()
    stop = threading.Event()
    with server_side, DisconnectWatch(server_side, stop, interval=0.05):
        client_side.sendall(b"more bytes from a live client")
        assert not stop.wait(0.5)
        client_side.close()
        assert stop.wait(5)


class _SetAfterFirstLook(threading.Event):
    """A stop event that reads as unset once (when the run starts), then as set: the run is
    cancelled after its first batch, as when the client disconnects mid-run."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > 1


@pytest.mark.parametrize("stop_kind", ["before the run", "during the run"])
def test_cancelled_run_writes_no_csv(random_cnn_weights: Path, folders: Folders,
                                     tmp_path: Path, stop_kind: str) -> None:
    from flask_ml.flask_ml_server.models import DirectoryInput

    from deepfake_toolkit.server import RunCancelledError

    # One file a batch, so that the run is cancelled with files still to score.
    service = DetectorService(weights_dir=random_cnn_weights, device="cpu", num_workers=0,
                              batch_size=1)

    stop = _SetAfterFirstLook() if stop_kind == "during the run" else threading.Event()
    if stop_kind == "before the run":
        stop.set()
    inputs = {"input_dataset": DirectoryInput(path=str(folders.images)),
              "output_file": DirectoryInput(path=str(tmp_path))}
    with pytest.raises(RunCancelledError, match="cancelled"):
        service.predict(inputs, {"models": "cnn", "facecrop": "false", "threshold": ""},
                        stop=stop)
    assert list(tmp_path.iterdir()) == []
