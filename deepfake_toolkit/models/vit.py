"""The two ViT-B/16 deepfake classifiers of the original system, run through timm.

Both are Hugging Face ``ViTForImageClassification`` models:
``dima806/deepfake_vs_real_image_detection`` ("TransformerDima" in RescueBox) and
``prithivMLmods/Deep-Fake-Detector-Model`` at revision e44d16a ("Transformer", a re-upload of the
same training run). timm's ``vit_base_patch16_224`` computes the same function;
:func:`convert_transformers_vit` renames the keys and fuses query/key/value.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch
from torch import nn

from .registry import register_model
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import WeightsFileError, load_pickled_checkpoint, load_safetensors

VIT_ARCHITECTURE = "vit_base_patch16_224"
"""timm architecture: ViT-B/16, 224 px, hidden 768, 12 layers, 12 heads, MLP 3072, qkv bias."""

VIT_LAYER_NORM_EPS = 1e-12
"""LayerNorm epsilon of transformers' ViT (timm's default is 1e-6)."""

VIT_PREPROCESS = Preprocess(input_size=224, resize="exact", interpolation="bilinear",
                            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
"""As the models' ViTImageProcessor: 224 x 224 bilinear (no crop), x/255, then (x - 0.5) / 0.5."""

ID2LABEL = {0: "Real", 1: "Fake"}


def build_vit(num_classes: int = 2, **overrides: int | float) -> nn.Module:
    """timm ViT-B/16 with transformers' LayerNorm epsilon, no weights loaded.

    Args:
        num_classes: Classes of the head.
        **overrides: timm VisionTransformer arguments replacing ViT-B/16's (e.g. ``embed_dim``,
            ``depth``, ``num_heads``, ``img_size``, ``patch_size`` for a small test model).
    """
    import timm

    return timm.create_model(
        VIT_ARCHITECTURE, pretrained=False, num_classes=num_classes,
        norm_layer=functools.partial(nn.LayerNorm, eps=VIT_LAYER_NORM_EPS), **overrides)


# (pattern on the key without "vit.", timm name). Covers the layout of transformers 4.x files (what
# the Hugging Face Hub holds and save_pretrained writes) and the module names of transformers 5.x.
_RENAMES = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
]
_QKV = re.compile(r"(?:encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)"
                  r"|layers\.(\d+)\.attention\.(q|k|v)_proj)\.(weight|bias)")
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def is_transformers_vit(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` uses transformers' ViT key names (``vit.embeddings...``)."""
    return any(key.startswith("vit.embeddings.") for key in state_dict)


def convert_transformers_vit(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``ViTForImageClassification`` state dict to timm's VisionTransformer.

    Query, key and value projections are concatenated (in that order) into timm's fused ``qkv``;
    the classifier becomes ``head``. Keys that have no timm counterpart are passed through unchanged
    so that the strict load names them as unexpected.

    Args:
        state_dict: transformers layout (``vit.*`` and ``classifier.*``).

    Returns:
        timm layout (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.N.*``, ``norm.*``,
        ``head.*``).

    Raises:
        WeightsFileError: A layer lacks its query, key or value projection.
    """
    converted: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        if key.startswith("classifier."):
            converted["head." + key.removeprefix("classifier.")] = tensor
            continue
        inner = key.removeprefix("vit.")
        qkv = _QKV.fullmatch(inner)
        if qkv:
            layer = qkv.group(1) or qkv.group(3)
            part = qkv.group(2) or qkv.group(4)
            qkv_parts.setdefault((layer, qkv.group(5)), {})[_QKV_ORDER[part]] = tensor
            continue
        for pattern, replacement in _RENAMES:
            renamed, count = re.subn(f"^{pattern}$", replacement, inner)
            if count:
                converted[renamed] = tensor
                break
        else:
            converted[key] = tensor
    for (layer, kind), parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            raise WeightsFileError(
                f"layer {layer} of the ViT weights lacks part of its query/key/value {kind}")
        converted[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])
    return converted


def load_vit_weights(path: str) -> dict[str, torch.Tensor]:
    """Read ViT weights in transformers or timm layout, from safetensors or a pickled ``.bin``.

    A ``.bin``/``.pt``/``.pth`` file is read without running pickled code. transformers layout
    (the Hugging Face download) is converted to timm's on the fly.

    Args:
        path: The weight file.

    Returns:
        A state dict for :func:`build_vit`.
    """
    if Path(path).suffix == ".safetensors":
        state_dict = load_safetensors(path)
    else:
        state_dict = load_pickled_checkpoint(path)
        if not isinstance(state_dict, dict):
            raise WeightsFileError(f"{path} holds a {type(state_dict).__name__}, not a state dict")
        state_dict = state_dict.get("state_dict", state_dict)
    return convert_transformers_vit(state_dict) if is_transformers_vit(state_dict) else state_dict


HF_LICENSE = "Apache-2.0 (stated on the dima806 model card)"


def _vit_instructions(name: str, repository: str, revision: str, folder: str,
                      revision_note: str) -> str:
    """What to download for a Hub ViT and the three ways to install it."""
    revision_option = "" if revision == "main" else f" --revision {revision}"
    return (
        f"The file is model.safetensors (about 343 MB) of the Hugging Face repository "
        f"{repository}{revision_note}. Both ViT repositories name their file model.safetensors, "
        f"so the toolkit looks for it under a model-specific name: either save it as "
        f"{name}.safetensors in one of those folders, or keep the Hub's layout as "
        f"{folder}/model.safetensors inside one (e.g. 'huggingface-cli download {repository} "
        f"model.safetensors{revision_option} --local-dir weights/{folder}'), or run "
        f"'deepfake-toolkit weights import model.safetensors --model {name}', which checks it "
        f"and installs {name}.safetensors (timm layout). A pytorch_model.bin of the same model "
        "can be imported the same way.")


def last_block_norm(module: nn.Module) -> tuple[HeatmapLayer, ...]:
    """The heatmap layer: the last block's first LayerNorm (197 tokens: class token + 14 x 14)."""
    return (HeatmapLayer(module.blocks[-1].norm1, prefix_tokens=1),)


def vit_spec(name: str, repository: str, revision: str, folder: str, description: str,
             license: str, revision_note: str, extra: dict) -> ModelSpec:
    """A registry entry for a transformers ViT-B/16 deepfake classifier from the Hub."""
    return ModelSpec(
        name=name,
        description=description,
        build=build_vit,
        load_state_dict=load_vit_weights,
        preprocess=VIT_PREPROCESS,
        output="softmax",
        fake_index=1,
        explain_layers=last_block_norm,
        weights=(
            WeightFile(
                filename=f"{name}.safetensors",
                alternatives=(f"{folder}/model.safetensors",),
                url=f"https://huggingface.co/{repository}/resolve/{revision}/model.safetensors",
                license=license,
                source=f"Hugging Face {repository} (transformers ViTForImageClassification)",
                instructions=_vit_instructions(name, repository, revision, folder, revision_note),
            ),
        ),
        extra={
            "architecture": f"ViT-B/16 (timm {VIT_ARCHITECTURE}, LayerNorm eps 1e-12)",
            "parameters": 85_800_194,
            "id2label": ID2LABEL,
            **extra,
        },
    )


VIT_DIMA806_SPEC = register_model(vit_spec(
    name="vit_dima806",
    repository="dima806/deepfake_vs_real_image_detection",
    revision="main",
    folder="dima806/deepfake_vs_real_image_detection",
    description="ViT-B/16 deepfake vs real classifier by dima806 (Hugging Face)",
    license=HF_LICENSE,
    revision_note="",
    extra={
        "original_system": "RescueBox 'TransformerDima'",
        "reported": {"accuracy": 0.9927, "test_set": "76,161 held-out images of the author's "
                     "own Kaggle data (no cross-dataset results)"},
        "note": "The author suggests lowering the fake threshold for newer generators.",
    },
))

VIT_PRITHIV_SPEC = register_model(vit_spec(
    name="vit_prithiv",
    repository="prithivMLmods/Deep-Fake-Detector-Model",
    revision="e44d16a",
    folder="prithivMLmods/Deep-Fake-Detector-Model@e44d16a",
    description="ViT-B/16 deepfake classifier by prithivMLmods at revision e44d16a (Hugging Face)",
    license="not verified here: see the model card at revision e44d16a (a re-upload of dima806's "
            "Apache-2.0 model)",
    revision_note=(
        " at revision e44d16a, not the latest: later revisions changed the model. If the short "
        "revision in the address is not accepted, open the repository's commit history, pick "
        "commit e44d16a and download model.safetensors from its files"),
    extra={"original_system": "RescueBox 'Transformer'",
           "note": "A re-upload of the same training run as vit_dima806."},
))
