"""Streamed, resumable output: interrupted runs resumed give the rows of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import pandas as pd
import pytest
from PIL import Image

from deepfake_toolkit import classify_directory, load_model
from deepfake_toolkit.models import WeightFile, get_spec, register_model, save_weights, \
    unregister_model
from deepfake_toolkit.output import ResumeRefused, partial_path, record_path
from deepfake_toolkit.results import COLUMNS, read_csv, read_table

from .conftest import rows_written

KEY = ["path", "model"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector(random_cnn_weights):
    return load_model("cnn", weights_dir=random_cnn_weights, device="cpu")


@pytest.fixture(scope="module")
def tiny(random_cnn_weights):
    """The default network at 32 px input: the same pipeline, scored many times faster."""
    base = get_spec("cnn")
    spec = dataclasses.replace(base, name="cnn_at_32",
                               preprocess=dataclasses.replace(base.preprocess, input_size=32),
                               weights=(WeightFile("cnn_at_32.safetensors"),))
    register_model(spec)
    state = load_model("cnn", random_cnn_weights).module.state_dict()
    save_weights(spec, state, random_cnn_weights / "cnn_at_32.safetensors")
    yield load_model("cnn_at_32", weights_dir=random_cnn_weights, device="cpu")
    unregister_model("cnn_at_32")


def _images(folder, count: int, broken: tuple[int, ...] = (), side: int = 32) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"{i:04d}.png"
        if i in broken:
            path.write_bytes(b"\x89PNG not really")
        else:
            Image.new("RGB", (side, side), (i * 7 % 256, i * 13 % 256, 90)).save(path)
    return sorted(str(p) for p in folder.iterdir())


def _same_rows(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert not a.duplicated(KEY).any() and not b.duplicated(KEY).any()
    a = a.sort_values(KEY, ignore_index=True)[list(COLUMNS)]
    b = b.sort_values(KEY, ignore_index=True)[list(COLUMNS)]
    pd.testing.assert_frame_equal(a, b)


def _stop_after(batches: int):
    stop = threading.Event()
    seen = []

    def on_batch(rows: pd.DataFrame) -> None:
        seen.append(len(rows))
        if len(seen) == batches:
            stop.set()
    return stop, on_batch


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_after_a_stop_gives_the_rows_of_an_uninterrupted_run(tiny, tmp_path, suffix):
    folder = tmp_path / "images"
    _images(folder, 10)
    options = dict(face_crop=False, batch_size=3, progress=False, num_workers=0)
    full = classify_directory(folder, tiny, output_csv=tmp_path / f"full{suffix}", **options)

    out = tmp_path / f"out{suffix}"
    stop, on_batch = _stop_after(2)
    first = classify_directory(folder, tiny, output_csv=out, stop=stop, on_batch=on_batch,
                               **options)
    assert len(first) == 6 and len(read_table(out)) == 6
    assert not partial_path(out).exists() and record_path(out).exists()

    scored = []
    resumed = classify_directory(folder, tiny, output_csv=out, resume=True,
                                 on_batch=scored.append, **options)
    assert sum(len(rows) for rows in scored) == 4   # only the files not scored before
    _same_rows(resumed, full)
    _same_rows(read_table(out), full)
    # Nothing left to do: a second resume scores nothing and changes nothing.
    again = classify_directory(folder, tiny, output_csv=out, resume=True, **options)
    _same_rows(again, full)


def test_a_killed_run_leaves_a_readable_partial_that_resume_completes(tiny, tmp_path):
    folder = tmp_path / "images"
    _images(folder, 9)
    options = dict(face_crop=False, batch_size=2, progress=False, num_workers=0)
    full = classify_directory(folder, tiny, **options)

    class Crash(Exception):
        pass

    def crash_on_third(rows: pd.DataFrame, seen=[]) -> None:
        seen.append(rows)
        if len(seen) == 3:
            raise Crash

    out = tmp_path / "out.csv"
    with pytest.raises(Crash):
        classify_directory(folder, tiny, output_csv=out, on_batch=crash_on_third, **options)
    partial = partial_path(out)
    assert not out.exists() and len(read_csv(partial)) == 6
    # As kill -9 in the middle of a write: the last row cut short.
    with open(partial, "a", encoding="utf-8") as stream:
        stream.write(str(folder / "0006.png") + ",default,0.12")
    resumed = classify_directory(folder, tiny, output_csv=out, resume=True, **options)
    _same_rows(resumed, full)
    _same_rows(read_csv(out), full)
    assert not partial.exists()


def test_resume_scores_error_rows_and_changed_files_again(tiny, tmp_path):
    folder = tmp_path / "images"
    files = _images(folder, 4, broken=(1,))
    out = tmp_path / "out.csv"
    options = dict(face_crop=False, batch_size=2, progress=False, num_workers=0, output_csv=out)
    first = classify_directory(folder, tiny, **options)
    assert (first["label"] == "error").sum() == 1

    Image.new("RGB", (32, 32), (1, 2, 3)).save(files[1])          # repaired
    Image.new("RGB", (48, 32), (9, 9, 9)).save(files[2])          # changed
    os.utime(files[2], ns=(10**18, 10**18))
    scored = []
    resumed = classify_directory(folder, tiny, resume=True, on_batch=scored.append,
                                 **options)
    assert sorted(pd.concat(scored)["path"]) == [files[1], files[2]]
    assert (resumed["error"] == "").all() and len(resumed) == 4
    assert resumed.set_index("path").loc[files[2], "width"] == 48
    assert resumed.set_index("path").loc[files[2], "file_mtime"] == 10**9


def test_resume_with_other_settings_is_refused(detector, random_cnn_weights, tmp_path):
    folder = tmp_path / "images"
    _images(folder, 3)
    out = tmp_path / "out.csv"
    options = dict(face_crop=False, progress=False, num_workers=0, output_csv=out)
    classify_directory(folder, detector, threshold=0.5, **options)
    with pytest.raises(ResumeRefused, match="user_threshold was 0.5, now 0.7"):
        classify_directory(folder, detector, threshold=0.7, resume=True, **options)
    reduced = dataclasses.replace(detector, precision="bfloat16")
    with pytest.raises(ResumeRefused, match='precision was "float32", now "bfloat16"'):
        classify_directory(folder, reduced, threshold=0.5, resume=True, **options)
    record_path(out).unlink()
    with pytest.raises(ResumeRefused, match="not recorded"):
        classify_directory(folder, detector, threshold=0.5, resume=True, **options)

    cli = _cli("classify", folder, "-o", out, "-m", "cnn", "--weights-dir", random_cnn_weights,
               "--quiet", "--no-face-crop", "--threshold", "0.5")
    assert cli.wait(timeout=600) == 0
    refused = _cli("classify", folder, "-o", out, "-m", "cnn", "--weights-dir", random_cnn_weights,
                   "--quiet", "--resume")
    assert refused.wait(timeout=600) == 2
    message = refused.stderr.read()
    assert "cannot resume" in message and "face_crop.margin was null, now 0.1" in message


def _cli(*args) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DEEPFAKE_TOOLKIT_NO_TCMALLOC": "1"}
    # A test run started in the background by a shell (cmd &) inherits SIGINT ignored, and Python
    # then installs no Ctrl+C handler: restore the default, as a terminal would have it.
    return subprocess.Popen([sys.executable, "-m", "deepfake_toolkit", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_when_rows(process: subprocess.Popen, partial, rows: int, signum: int) -> None:
    while rows_written(partial) < rows:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signum)


def test_sigint_and_kill_leave_the_finished_rows_and_resume_completes(random_cnn_weights,
                                                                      tmp_path):
    folder = tmp_path / "images"
    # Large enough that decoding keeps the run going well past the signals.
    files = _images(folder, 60, side=800)
    out = tmp_path / "out.csv"
    args = ["classify", folder, "-o", out, "-m", "cnn", "--weights-dir", random_cnn_weights,
            "--quiet", "--no-face-crop", "--batch-size", "2", "--workers", "0"]

    first = _cli(*args)
    _signal_when_rows(first, partial_path(out), 4, signal.SIGINT)   # what Ctrl+C sends
    assert first.wait(timeout=600) == 130
    assert "--resume scores the rest" in first.stderr.read()
    written = read_csv(out)
    assert 4 <= len(written) < 60 and list(written["path"]) == files[:len(written)]
    assert not partial_path(out).exists()

    second = _cli(*args, "--resume")
    _signal_when_rows(second, partial_path(out), len(written) + 4, signal.SIGKILL)
    second.wait(timeout=600)
    assert not out.exists() or len(read_csv(out)) == len(written)
    survived = read_csv(partial_path(out))
    assert len(survived) >= len(written) + 4

    third = _cli(*args, "--resume")
    assert third.wait(timeout=600) == 0, third.stderr.read()
    table = read_csv(out)
    assert sorted(table["path"]) == files and (table["error"] == "").all()
    assert table["path"].iloc[:len(survived)].tolist() == survived["path"].tolist()


def test_memory_per_file_stays_small(tiny, tmp_path):
    """Python memory per file at the peak of a run, from 200 to 2,000 files (face crop off): the
    rows are held once, in columns allocated for the run. Measured: about 0.6 kB (1.1 kB when the
    batches were kept as tables and concatenated at the end); holding a dict per row and
    building the table at the end (the pipeline before streaming) measured 3.3 kB. A Path made
    per file (pathlib interns every file name it parses, in a table that never shrinks; c2pa
    parsed each path so) grew that table by 7.5 MB at once, 4.7 kB per file here, once earlier
    tests had filled it close to its next size."""
    source = tmp_path / "source"
    _images(source, 20)
    originals = sorted(source.iterdir())
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2000):
        os.link(originals[i % 20], folder / f"{i:05d}.png")
    files = sorted(str(p) for p in folder.iterdir())

    def peak(count: int) -> int:
        tracemalloc.start()
        try:
            frame = classify_files_quietly(files[:count], tiny, tmp_path / f"out{count}.csv")
            assert len(frame) == count
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    per_file = (peak(2000) - peak(200)) / 1800
    assert per_file < 1500, f"{per_file:.0f} bytes of Python memory per file"


def classify_files_quietly(files, model, out):
    from deepfake_toolkit import classify_files

    return classify_files(files, model, face_crop=False, batch_size=32, progress=False,
                          num_workers=0, output_csv=out)
