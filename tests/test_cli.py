import os
import subprocess
import sys

from PIL import Image

from deepfake_toolkit import __version__, read_csv


def run_cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "deepfake_toolkit", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_classify_writes_one_row_per_file_with_summary(tmp_path, random_cnn_weights,
                                                       astronaut):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    astronaut.save(folder / "face.jpg")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "nested" / "flat.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    out = tmp_path / "out.csv"
    result = run_cli("classify", folder, "-o", out, "-m", "cnn", "--weights-dir",
                     random_cnn_weights, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "3 files, 2 scored" in result.stdout and "1 errors" in result.stdout
    assert "images/s" in result.stdout
    table = read_csv(out)
    assert len(table) == 3 and (table["error"] != "").sum() == 1

    top = run_cli("classify", folder, "-o", out, "-m", "cnn", "--weights-dir", random_cnn_weights,
                  "--quiet", "--no-recursive", "--no-face-crop", "--threshold", "0.5")
    assert top.returncode == 0, top.stderr
    table = read_csv(out)
    assert len(table) == 2 and set(table["label"]) <= {"fake", "real", "error"}
    assert set(table["region"]) <= {"image", ""}


def test_classify_errors_exit_2_with_a_message(tmp_path, random_cnn_weights):
    missing = run_cli("classify", tmp_path / "nope")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = run_cli("classify", tmp_path, "-m", "no_such_model")
    assert unknown.returncode == 2 and "unknown model 'no_such_model'" in unknown.stderr
    assert "default" in unknown.stderr
    bad_threshold = run_cli("classify", tmp_path, "--threshold", "3")
    assert bad_threshold.returncode == 2 and "between 0 and 1" in bad_threshold.stderr


def test_missing_weights_exit_2_naming_file_and_folders(tmp_path, monkeypatch, capsys):
    from deepfake_toolkit import cli
    from deepfake_toolkit.models import weights

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(weights, "PROJECT_WEIGHTS", empty)
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    status = cli.main(["classify", str(tmp_path), "-o", str(tmp_path / "o.csv"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert "clip_pair.safetensors" in err and str(empty) in err
    assert not (tmp_path / "o.csv").exists()


def test_models_lists_weights_state(random_cnn_weights):
    present = run_cli("models", "--weights-dir", random_cnn_weights)
    assert present.returncode == 0
    line = next(l for l in present.stdout.splitlines() if l.startswith("cnn "))
    assert "weights present" in line


def test_no_command_prints_help():
    result = run_cli()
    assert result.returncode == 2 and "classify" in result.stdout


def test_tcmalloc_is_preloaded_by_re_running_the_command(monkeypatch, tmp_path):
    from deepfake_toolkit import cli

    library = tmp_path / "lib" / "libtcmalloc_minimal.so.4"
    library.parent.mkdir()
    library.write_bytes(b"")
    monkeypatch.setenv("CONDA_PREFIX", str(tmp_path))
    monkeypatch.delenv(cli.NO_TCMALLOC_ENV, raising=False)
    monkeypatch.setenv("LD_PRELOAD", "")
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda *args: calls.append(args))
    assert cli.find_tcmalloc() == str(library)
    cli.preload_tcmalloc(["models"])
    executable, argv, env = calls[0]
    assert argv[1:] == ["-m", "deepfake_toolkit", "models"]
    assert env["LD_PRELOAD"] == str(library) and env[cli.NO_TCMALLOC_ENV] == "1"

    calls.clear()
    monkeypatch.setenv(cli.NO_TCMALLOC_ENV, "1")
    cli.preload_tcmalloc(["models"])
    monkeypatch.delenv(cli.NO_TCMALLOC_ENV)
    monkeypatch.setenv("LD_PRELOAD", str(library))
    cli.preload_tcmalloc(["models"])
    assert calls == []


def test_without_tcmalloc_the_command_re_runs_with_glibc_huge_pages(monkeypatch):
    from deepfake_toolkit import cli

    monkeypatch.setattr(cli, "find_tcmalloc", lambda: None)
    monkeypatch.delenv(cli.NO_TCMALLOC_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda *args: calls.append(args))
    cli.preload_tcmalloc(["classify", "x"])
    executable, argv, env = calls[0]
    assert argv[1:] == ["-m", "deepfake_toolkit", "classify", "x"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert "LD_PRELOAD" not in env and env[cli.NO_TCMALLOC_ENV] == "1"

    calls.clear()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    cli.preload_tcmalloc(["classify", "x"])
    assert calls == []


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEEPFAKE_TOOLKIT_NO_TCMALLOC": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)


def test_the_command_line_starts_without_importing_pytorch():
    # The command re-runs itself once with tcmalloc preloaded: the first run must not pay for
    # PyTorch (about 2 s on 2 cores) only to throw it away.
    done = _python("import sys, deepfake_toolkit.cli, deepfake_toolkit; "
                   "print(sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    public = _python("import deepfake_toolkit as d; print(d.load_model.__module__, "
                     "sorted(set(d.__all__) - set(dir(d))))")
    assert public.stdout.split() == ["deepfake_toolkit.models.loading", "[]"], public.stderr


def test_ctrl_c_while_pytorch_is_imported_exits_130_without_a_traceback():
    # A Ctrl+C in the first seconds of a command lands in an import: here, the import of torch.
    done = _python(
        "import sys\n"
        "import deepfake_toolkit.cli as cli\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "sys.argv = ['deepfake-toolkit', 'models']\n"
        "cli.console_main()\n")
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n"
