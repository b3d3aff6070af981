"""What keeps the default model's run level near 2 GB: loading holds one copy of the weights, CPU
inference runs in small passes with the scores of a whole-batch pass, decoding workers give large
allocations their own memory maps under glibc, and the garbage collector leaves the main process's
objects shared with the workers."""

from __future__ import annotations

import functools
import gc
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deepfake_toolkit import classify_files
from deepfake_toolkit.pipeline import PackedPaths
from deepfake_toolkit.models import get_spec
from deepfake_toolkit.models.loading import build_loaded

from .toy_models import DetailScore, toy_detector


class _WithConstant(nn.Module):
    """A linear layer plus a constant set in the constructor that no weight file holds."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.register_buffer("offset", torch.tensor([0.25, -0.5, 1.0]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x + self.offset)


def test_loaded_module_holds_the_files_tensors_not_a_copy():
    spec = get_spec("cnn")
    torch.manual_seed(0)
    state = spec.build().state_dict()
    module = build_loaded(spec.build, state, "a random cnn checkpoint").eval()
    loaded = module.state_dict()
    assert not any(value.is_meta for value in loaded.values())
    assert all(loaded[key].data_ptr() == state[key].data_ptr() for key in state)
    copied = spec.build()
    copied.load_state_dict(state)
    images = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(module(images), copied.eval()(images))


def test_constructor_constants_survive_loading():
    state = {"linear.weight": torch.tensor([[1.0, 2.0, 3.0]]), "linear.bias": torch.tensor([0.5])}
    module = build_loaded(_WithConstant, state, "a file without the constant")
    assert torch.equal(module.offset, torch.tensor([0.25, -0.5, 1.0]))
    # (1 + 0.25) * 1 + (1 - 0.5) * 2 + (1 + 1) * 3 + 0.5
    assert module(torch.ones(1, 3)).item() == 8.75


@pytest.mark.parametrize("size, passes", [(224, [4, 4, 3]), (112, [11]), (32, [11])])
def test_cpu_inference_runs_in_small_passes_with_the_whole_batch_scores(size, passes):
    module = DetailScore()
    detector = toy_detector(module, "detail")
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    images = torch.rand(11, 3, size, size)  # 4 images of 224 px per pass; 16 of 112 px
    scores = detector.predict(images)
    assert seen == passes
    with torch.inference_mode():
        whole = torch.sigmoid(module(images)).squeeze(1).numpy()
    np.testing.assert_allclose(scores, whole, rtol=1e-6, atol=1e-7)
    one_by_one = np.concatenate([detector.predict(image[None]) for image in images])
    np.testing.assert_allclose(scores, one_by_one, rtol=1e-6, atol=1e-7)


MALLOC_PROBE = """
import ctypes, sys
from deepfake_toolkit.pipeline import settle_worker_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "settled":
    settle_worker_memory()
mapped = []
for _ in range(3):  # 1.5 MiB: above the fixed threshold, below glibc's once it has risen
    before = libc.mallinfo2().hblks
    block = libc.malloc(3 << 19)
    mapped.append(libc.mallinfo2().hblks - before)
    libc.free(block)
print(mapped)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_decoding_workers_keep_giving_large_allocations_their_own_maps():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}

    def maps(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", MALLOC_PROBE, mode], capture_output=True,
                              text=True, env=env, timeout=120)
        if "mallinfo2" in done.stderr:
            pytest.skip("glibc older than 2.33 (no mallinfo2)")
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # glibc alone: once a mapped block is freed, the next one of that size comes from a heap.
    assert maps("plain") == "[1, 0, 0]"
    assert maps("settled") == "[1, 1, 1]"


FORK_PROBE = """
import gc, os, sys
from deepfake_toolkit.pipeline import frozen_for_workers

def private_kib():
    with open("/proc/self/smaps_rollup") as rollup:
        return sum(int(line.split()[1]) for line in rollup
                   if line.startswith(("Private_Dirty:", "Private_Clean:")))

ballast = [[i] for i in range(400_000)]  # about 40 MB of objects the collector tracks
gc.collect()
read, write = os.pipe()
with frozen_for_workers(1 if sys.argv[1] == "frozen" else 0):
    pid = os.fork()
    if pid == 0:
        before = private_kib()
        gc.collect()  # a full pass, as a worker's collector eventually runs
        os.write(write, str(private_kib() - before).encode())
        os._exit(0)
os.waitpid(pid, 0)
print(os.read(read, 64).decode(), gc.get_freeze_count())
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_a_full_collection_in_a_worker_leaves_the_main_processs_objects_shared():
    def copied_kib(mode: str) -> tuple[int, int]:
        done = subprocess.run([sys.executable, "-c", FORK_PROBE, mode], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        copied, frozen_after = done.stdout.split()
        return int(copied), int(frozen_after)

    plain, _ = copied_kib("plain")
    frozen, frozen_after = copied_kib("frozen")
    assert plain > 20_000  # the pass wrote to every object's page: the worker copied them
    assert frozen < plain / 5
    assert frozen_after == 0  # the objects go back to the collector when the block ends


def _record_freeze_count(folder: Path, image: Image.Image) -> Image.Image:
    (folder / f"seen_in_{os.getpid()}").write_text(str(gc.get_freeze_count()))
    return image


def test_classify_workers_start_with_the_main_processs_objects_frozen(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 60, 0, 0)).save(images / f"{i}.png")
    records = tmp_path / "records"
    records.mkdir()
    module = DetailScore()
    frame = classify_files(sorted(images.iterdir()), toy_detector(module, "detail"),
                           face_crop=False, progress=False, num_workers=1,
                           worker_start="fork", provenance=False,
                           perturb=functools.partial(_record_freeze_count, records))
    assert (frame["label"] != "error").all()
    seen = [int(f.read_text()) for f in records.iterdir()]
    assert len(seen) == 1 and seen[0] > 1000  # one worker, forked with the objects frozen
    assert gc.get_freeze_count() == 0  # and the main process's are back when the run ends


PATHS_PROBE = """
import os, sys
from deepfake_toolkit.pipeline import _FileDataset

def private_kib():
    with open("/proc/self/smaps_rollup") as rollup:
        return sum(int(line.split()[1]) for line in rollup
                   if line.startswith(("Private_Dirty:", "Private_Clean:")))

paths = [f"/data/case-{i // 1000:03d}/image_{i:07d}_from_the_camera_roll.jpg"
         for i in range(200_000)]  # about 20 MB of path strings
dataset = _FileDataset(paths, [], None, True, "whole", 1, None)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    before = private_kib()
    total = sum(len(dataset.paths[i]) for i in range(len(dataset.paths)))  # as a worker reads
    os.write(write, f"{private_kib() - before} {total}".encode())
    os._exit(0)
os.waitpid(pid, 0)
print(os.read(read, 64).decode(), sum(map(len, paths)))
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="Linux /proc only")
def test_a_worker_reading_every_path_leaves_the_main_processs_paths_shared():
    done = subprocess.run([sys.executable, "-c", PATHS_PROBE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    copied, read_in_child, expected = (int(v) for v in done.stdout.split())
    assert read_in_child == expected  # the child read every path, whole
    # A list of strings: the child copies about 20 MB of pages (every reference count written).
    assert copied < 3_000


def test_packed_paths_give_back_every_path_exactly():
    names = ["/photos/a.jpg", "relative/b.png", "caf\u00e9/\u732b.jpg",
             os.fsdecode(b"/photos/\xff\xfe-not-utf8.jpg"),  # surrogate escapes
             "/photos/lone-\ud800-surrogate.jpg", "", "/with\x00nul.png"]
    packed = PackedPaths([*names, Path("/photos/c.jpg")])
    assert len(packed) == len(names) + 1
    assert [packed[i] for i in range(len(packed))] == [*names, "/photos/c.jpg"]
    assert packed[-1] == "/photos/c.jpg" and packed[1:3] == names[1:3]
    with pytest.raises(IndexError):
        packed[len(packed)]
    assert list(PackedPaths([])) == []
