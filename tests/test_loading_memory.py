"""What keeps the default model's run level near 2 GB: loading holds one copy of the weights, CPU
inference runs in small passes with the scores of a whole-batch pass, and decoding workers give
large allocations their own memory maps under glibc."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from deepfake_toolkit.models import get_spec
from deepfake_toolkit.models.loading import CPU_FORWARD_IMAGES, build_loaded

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


def test_cpu_inference_runs_in_small_passes_with_the_whole_batch_scores():
    module = DetailScore()
    detector = toy_detector(module, "detail")
    seen: list[int] = []
    module.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
    images = torch.rand(2 * CPU_FORWARD_IMAGES + 3, 3, 64, 64)
    scores = detector.predict(images)
    assert seen == [CPU_FORWARD_IMAGES, CPU_FORWARD_IMAGES, 3]
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
