"""Loading holds one copy of the weights, and CPU inference runs in small passes with the scores
of a whole-batch pass: the two changes that keep the default model's run under 2 GB."""

from __future__ import annotations

import numpy as np
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
