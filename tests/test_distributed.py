"""The Ray engine: the same rows as the local engine, error rows, crashed actors, clean shutdown.

One local Ray cluster (2 CPUs, no dashboard) serves the whole session. Each test that runs Ray
has a timeout: a resource deadlock hangs without any error.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from deepfake_toolkit import classify_directory, classify_files, load_model
from deepfake_toolkit import distributed
from deepfake_toolkit.distributed import RayEngineError, _end_half_started_ray, _reinstall, \
    plan_actors, ray_session
from deepfake_toolkit.output import partial_path
from deepfake_toolkit.results import read_table, restore_types

from .conftest import rows_written

RAY_PROCESSES = ("raylet", "gcs_server")
ray_timeout = pytest.mark.timeout(240, method="signal")


def ray_processes(temp_dir: str) -> list[int]:
    """Ids of the raylet and GCS server processes of the Ray whose temporary folder is
    ``temp_dir``."""
    import psutil

    found = []
    for process in psutil.process_iter(["name", "cmdline", "status"]):
        try:
            if process.info["name"] in RAY_PROCESSES and \
                    process.info["status"] != psutil.STATUS_ZOMBIE and \
                    temp_dir in " ".join(process.info["cmdline"] or []):
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def wait_until_gone(temp_dir: str, seconds: float = 20.0) -> list[int]:
    """Wait for ``temp_dir``'s Ray processes to end; the ones still running after ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := ray_processes(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def short_temp_dir() -> str:
    # Ray's socket paths must stay under about 107 characters: pytest's tmp_path is too long.
    return tempfile.mkdtemp(prefix="dft-ray-", dir="/tmp")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray for this module's tests; afterwards, none of its processes may remain.
    (Not kept for the whole session: with Ray initialised in the process, a Ctrl+C in later
    tests can be lost.)"""
    ray = pytest.importorskip(
        "ray", reason='Ray is not installed: pip install "deepfake-toolkit[ray]"')
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    temp_dir = short_temp_dir()
    interrupt_handler = signal.getsignal(signal.SIGINT)
    try:
        for attempt in range(3):
            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                         object_store_memory=200 * 1024 ** 2, _temp_dir=temp_dir)
                break
            except Exception:
                # On an overloaded machine the raylet can miss Ray's fixed 30 s to register;
                # end what the failed start left, then try again.
                ray.shutdown()
                _end_half_started_ray()
                if attempt == 2:
                    raise
        _reinstall(interrupt_handler)
        assert ray_processes(temp_dir), "the process check does not see this cluster"
        yield ray
    finally:
        ray.shutdown()
        _reinstall(interrupt_handler)
        left = wait_until_gone(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left running after the session: {left}"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, astronaut, no_face_image) -> Path:
    """Faces (one in a sub-folder, smaller, as JPEG), a photo without a face, two broken files."""
    folder = tmp_path_factory.mktemp("ray-images")
    (folder / "nested").mkdir()
    astronaut.save(folder / "astronaut.png")
    astronaut.resize((300, 300)).save(folder / "nested" / "astronaut_small.jpg", quality=90)
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "flipped.webp")
    no_face_image.resize((320, 200)).save(folder / "cup.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a JPEG")
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def both_engines(ray_cluster, image_folder, tmp_path_factory):
    """The shipped CNN's (trained weights, face crop on) tables from both engines, and the files
    they wrote."""
    from conftest import project_weights_present

    if not project_weights_present("cnn"):
        pytest.skip("the CNN's weights are not in weights/")
    out = tmp_path_factory.mktemp("ray-out")
    detector = load_model("cnn", device="cpu")
    options = dict(batch_size=2, progress=False, device="cpu")
    local = classify_directory(image_folder, detector, output_csv=out / "local.csv",
                               num_workers=0, **options)
    on_ray = classify_directory(image_folder, detector, engine="ray",
                                output_csv=out / "ray.parquet", **options)
    return local, on_ray, out


@ray_timeout
def test_ray_gives_the_local_rows(both_engines, ray_cluster):
    local, on_ray, _ = both_engines
    assert ray_cluster.is_initialized(), "the run shut down a Ray it had not started"
    assert on_ray["path"].tolist() == local["path"].tolist()
    assert on_ray["label"].tolist() == local["label"].tolist()
    assert (local["region"] == "face").sum() == 3 and (local["label"] == "error").sum() == 2
    pd.testing.assert_frame_equal(on_ray, local, check_exact=False, atol=1e-5, rtol=0)


@ray_timeout
def test_ray_writes_the_same_table_as_local(both_engines):
    _, _, out = both_engines
    pd.testing.assert_frame_equal(read_table(out / "ray.parquet"), read_table(out / "local.csv"),
                                  check_exact=False, atol=1e-5, rtol=0)


@ray_timeout
def test_corrupt_and_empty_files_become_error_rows(both_engines, image_folder):
    local, on_ray, _ = both_engines
    rows = on_ray.set_index("path")
    for name, message in (("broken.jpg", "not a readable image"), ("empty.png", "empty file")):
        row = rows.loc[str(image_folder / name)]
        assert row["label"] == "error" and message in row["error"]
        assert math.isnan(row["fake_score"]) and row["region"] == ""
        assert row["error"] == local.set_index("path").loc[str(image_folder / name), "error"]


@ray_timeout
def test_dataset_of_paths_survives_an_actor_that_crashes_once(ray_cluster, random_cnn_weights,
                                                              image_folder, tmp_path):
    from deepfake_toolkit.distributed import classify_dataset

    files = sorted(str(p) for p in image_folder.rglob("*") if p.is_file())
    listing = tmp_path / "paths.parquet"
    pd.DataFrame({"file": files, "case": "42"}).to_parquet(listing)
    marker = tmp_path / "crashed"

    def crash_once(image: Image.Image) -> Image.Image:
        # Runs in a crop actor: the first image kills its process, once.
        if not marker.exists():
            marker.touch()
            os._exit(1)
        return image

    detector = load_model("cnn", weights_dir=random_cnn_weights, device="cpu")
    dataset = classify_dataset(ray_cluster.data.read_parquet(str(listing)), detector,
                               face_crop=False, batch_size=2, path_column="file",
                               perturb=crash_once)
    on_ray = restore_types(dataset.to_pandas()).sort_values("path", ignore_index=True)
    assert marker.exists(), "no actor crashed, so the test proved nothing"
    local = classify_files(files, detector, face_crop=False, progress=False, num_workers=0)
    assert on_ray["path"].tolist() == files
    pd.testing.assert_frame_equal(on_ray, local, check_exact=False, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cpus, gpus", [(1, 0), (2, 0), (3, 0), (4, 1), (16, 0), (16, 4)])
def test_actor_pools_never_reserve_every_cpu(cpus, gpus):
    for crop_actors in (None, 1, 8):
        plan = plan_actors(cpus, gpus, use_gpu=gpus > 0, crop_actors=crop_actors)
        reserved = plan.crop_actors * plan.crop_cpus + plan.model_actors * plan.model_cpus
        assert reserved <= max(0.0, cpus - 1) + 1e-9
        assert plan.crop_actors >= 1 and plan.model_actors >= 1
        assert plan.model_gpus == (1.0 if gpus else 0.0)
        if gpus:
            assert plan.model_actors == gpus


def test_cuda_without_gpus_in_the_cluster_is_refused():
    with pytest.raises(RayEngineError, match="no GPU"):
        plan_actors(8, 0, use_gpu=True)


def test_ray_engine_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys,
                                                   random_cnn_weights):
    from deepfake_toolkit.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(RayEngineError, match=r'pip install "deepfake-toolkit\[ray\]"'):
        classify_directory(tmp_path, "cnn", weights_dir=random_cnn_weights,
                           engine="ray", progress=False)
    assert main(["classify", str(tmp_path), "--engine", "ray", "-o",
                 str(tmp_path / "out.csv")]) == 2
    error = capsys.readouterr().err
    assert 'pip install "deepfake-toolkit[ray]"' in error and "Traceback" not in error
    assert not (tmp_path / "out.csv").exists()


def test_unknown_engine_and_address_without_ray_are_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        classify_files([], engine="spark")
    with pytest.raises(ValueError, match="ray_address needs engine='ray'"):
        classify_files([], ray_address="auto")


def _cli(*args: object, temp_dir: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": temp_dir,
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "deepfake_toolkit", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@ray_timeout
def test_cli_on_a_running_cluster_writes_the_local_table_and_leaves_the_cluster_up(
        ray_cluster, both_engines, image_folder, tmp_path):
    local, _, _ = both_engines
    context = ray_cluster.get_runtime_context()
    cluster = ray_processes(context.get_temp_dir())
    assert cluster
    temp_dir = short_temp_dir()
    try:
        run = _cli("classify", image_folder, "-m", "cnn", "--engine", "ray", "--ray-address",
                   context.gcs_address,
                   "-o", tmp_path / "out.parquet", "--batch-size", "2", "--device", "cpu",
                   "--quiet", temp_dir=temp_dir)
        stdout, stderr = run.communicate(timeout=200)
        assert run.returncode == 0, stderr
        assert "6 files, 4 scored" in stdout and "2 errors" in stdout
        pd.testing.assert_frame_equal(read_table(tmp_path / "out.parquet"), local,
                                      check_exact=False, atol=1e-5, rtol=0)
        assert not ray_processes(temp_dir), "the run started a Ray of its own"
        assert ray_processes(context.get_temp_dir()) == cluster, "the run took the cluster down"
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


@ray_timeout
@pytest.mark.parametrize("when", ["scoring", "actors starting"])
def test_ctrl_c_during_a_ray_run_leaves_no_ray_processes(ray_cluster, astronaut, tmp_path, when):
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(120):  # far more than can be scored between the first row and Ctrl+C
        astronaut.save(folder / f"{index:03d}.jpg", quality=90)
    temp_dir = short_temp_dir()
    out = tmp_path / "out.csv"
    run = _cli("classify", folder, "-m", "cnn", "--engine", "ray", "-o", out,
               "--batch-size", "1", "--device", "cpu", temp_dir=temp_dir)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True)
    reader.start()
    try:
        # "scoring": Ctrl+C once rows reach the partial output. "actors starting": 0.6 s after
        # Ray Data starts the dataset, while its actors start (this once ended the process with
        # Ray's own exit, status 1, or a segmentation fault, and wrote nothing).
        deadline = time.monotonic() + 180
        while (rows_written(partial_path(out)) < 1 if when == "scoring"
               else not any("Starting execution" in line for line in lines)):
            assert run.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        if when == "actors starting":
            time.sleep(0.6)
        assert ray_processes(temp_dir), "the run's own Ray is not running"
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 130, "".join(lines)
        reader.join(timeout=10)
        assert "interrupted: wrote the" in "".join(lines)
        assert not wait_until_gone(temp_dir)
        written = len(read_table(out))  # the rows scored before Ctrl+C
        assert (1 if when == "scoring" else 0) <= written < 120
    finally:
        if run.poll() is None:
            run.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ctrl_c_while_ray_starts_counts_once_ray_is_up(monkeypatch):
    """A Ctrl+C inside ray.init is held back until it returns (a KeyboardInterrupt halfway
    through building Ray's core worker crashed the process at exit), then ends Ray as any
    Ctrl+C does."""
    events: list[str] = []

    class StartingRay:
        def is_initialized(self) -> bool:
            return False

        def init(self, **options) -> None:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C halfway through the start
            time.sleep(0.2)
            events.append("started")

        def shutdown(self) -> None:
            events.append("shut down")

    monkeypatch.setattr(distributed, "import_ray", StartingRay)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with ray_session(None):
            events.append("used")
    assert events == ["started", "shut down"]
    assert signal.getsignal(signal.SIGINT) is handler
