"""ViT detectors: the transformers -> timm converter proven on random transformers models, the
registry entries, their preprocessing against ViTImageProcessor, and the weight file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data

from deepfake_toolkit.models import (
    WeightsMismatchError,
    WeightsNotFoundError,
    get_spec,
    import_weights,
    load_model,
)
from deepfake_toolkit.models.loading import load_strict
from deepfake_toolkit.models.transforms import ImageTransform
from deepfake_toolkit.models.vit import build_vit, convert_transformers_vit, load_vit_weights

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 256, "image_size": 32, "patch_size": 8}
"""A small ViT geometry for fast converter checks."""


pytestmark = pytest.mark.usefixtures("one_torch_thread", "no_project_weights")


def random_transformers_vit(**geometry: int) -> torch.nn.Module:
    """A randomly initialised ViTForImageClassification with the models' labels, in eval mode."""
    config = transformers.ViTConfig(num_labels=2, id2label={0: "Real", 1: "Fake"},
                                    label2id={"Real": 0, "Fake": 1}, layer_norm_eps=1e-12,
                                    **geometry)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        # Random LayerNorm affine and biases too, so that a swapped or dropped one shows.
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                parameter.normal_(0, 0.5)
    return model


def timm_small() -> torch.nn.Module:
    return build_vit(img_size=SMALL["image_size"], patch_size=SMALL["patch_size"],
                     embed_dim=SMALL["hidden_size"], depth=SMALL["num_hidden_layers"],
                     num_heads=SMALL["num_attention_heads"]).eval()


def hub_file(model: torch.nn.Module, folder: Path) -> Path:
    """``model`` saved as the Hub holds it (save_pretrained writes the transformers 4.x layout)."""
    model.save_pretrained(folder)
    return folder / "model.safetensors"


def assert_same_logits(reference: torch.nn.Module, converted: torch.nn.Module, size: int,
                       batch: int = 3) -> None:
    pixels = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        expected = reference(pixel_values=pixels).logits
        torch.testing.assert_close(converted(pixels), expected, rtol=0, atol=1e-4)


def test_converter_on_a_hub_layout_file_gives_the_same_logits(tmp_path: Path) -> None:
    reference = random_transformers_vit(**SMALL)
    path = hub_file(reference, tmp_path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert any(".attention.attention.query." in key for key in handle.keys())
    model = timm_small()
    load_strict(model, load_vit_weights(str(path)), "converted small ViT")
    assert_same_logits(reference, model, SMALL["image_size"])


def test_pickled_bin_and_in_memory_layouts_convert_the_same(tmp_path: Path) -> None:
    reference = random_transformers_vit(**SMALL)
    from safetensors.torch import load_file

    hub_layout = load_file(str(hub_file(reference, tmp_path / "hub")))
    torch.save(hub_layout, tmp_path / "pytorch_model.bin")
    from_bin = load_vit_weights(str(tmp_path / "pytorch_model.bin"))
    from_modules = convert_transformers_vit(reference.state_dict())
    assert from_bin.keys() == from_modules.keys()
    for key in from_bin:
        torch.testing.assert_close(from_bin[key], from_modules[key], rtol=0, atol=0)
    model = timm_small()
    load_strict(model, from_modules, "converted small ViT")
    assert_same_logits(reference, model, SMALL["image_size"])


def test_real_vit_b16_geometry_through_import_and_registry(tmp_path: Path) -> None:
    reference = random_transformers_vit()
    assert reference.config.hidden_size == 768 and reference.config.num_hidden_layers == 12
    download = hub_file(reference, tmp_path / "download")
    installed = import_weights(download, "vit_dima806", tmp_path / "weights")
    assert installed.name == "vit_dima806.safetensors"
    detector = load_model("vit_dima806", weights_dir=tmp_path / "weights", device="cpu")
    assert_same_logits(reference, detector.module, 224, batch=2)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        p_fake = torch.softmax(reference(pixel_values=pixels).logits, dim=-1)[:, 1]
    np.testing.assert_allclose(detector.predict(pixels), p_fake.numpy(), atol=1e-5)


def test_hub_file_is_found_under_its_repository_folder(tmp_path: Path) -> None:
    reference = random_transformers_vit(**SMALL)
    spec = get_spec("vit_prithiv")
    relative = spec.weights[0].alternatives[0]
    assert relative == "prithivMLmods/Deep-Fake-Detector-Model@e44d16a/model.safetensors"
    hub_file(reference, (tmp_path / relative).parent)
    # The registered model is ViT-B/16, so this small file is found, read, converted, and then
    # refused by the strict check - which proves the lookup and the conversion ran.
    with pytest.raises(WeightsMismatchError, match="wrong shape keys: blocks.0.attn.proj.bias"):
        load_model("vit_prithiv", weights_dir=tmp_path, device="cpu")


@pytest.mark.parametrize("name", ["vit_dima806", "vit_prithiv"])
def test_preprocessing_equals_vit_image_processor(name: str) -> None:
    # The PIL backend is the processor these models were published with (transformers 4.x's
    # ViTImageProcessor); transformers 5 renamed it and made a torchvision one the default.
    processor_class = getattr(transformers, "ViTImageProcessorPil", transformers.ViTImageProcessor)
    processor = processor_class(do_resize=True, size={"height": 224, "width": 224}, resample=2,
                                do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                image_mean=[0.5] * 3, image_std=[0.5] * 3)
    transform = ImageTransform(get_spec(name).preprocess)
    rng = np.random.default_rng(1)
    for array in (data.astronaut(), data.coffee(), rng.integers(0, 256, (97, 131, 3), np.uint8)):
        image = Image.fromarray(array)
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(transform(image), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, facts", [
    ("vit_dima806", ["vit_dima806.safetensors", "dima806/deepfake_vs_real_image_detection/model",
                     "https://huggingface.co/dima806/deepfake_vs_real_image_detection/resolve/"
                     "main/model.safetensors", "weights import model.safetensors --model "
                     "vit_dima806", "Apache-2.0"]),
    ("vit_prithiv", ["vit_prithiv.safetensors", "e44d16a", "resolve/e44d16a/model.safetensors",
                     "--model vit_prithiv"]),
])
def test_missing_weights_say_what_to_download_and_where(name: str, facts: list[str],
                                                        tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as error:
        load_model(name, weights_dir=tmp_path, device="cpu")
    message = str(error.value)
    for fact in facts + [str(tmp_path)]:
        assert fact in message, fact


def test_specs_report_p_fake_from_class_one() -> None:
    for name in ("vit_dima806", "vit_prithiv"):
        spec = get_spec(name)
        assert spec.output == "softmax" and spec.fake_index == 1
        assert spec.extra["id2label"] == {0: "Real", 1: "Fake"}
        scores = spec.scores_from_output(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
        assert scores[0] < 0.5 < scores[1]
