"""Fine-tune the CLIP tower's last block with the transfer probe, under the transfer protocol.

The transfer probe (``embeds``, C = 0.001, self-blends as one more fake folder: the `default`
pair's probe that transfers) reads the projected embedding, which only the last block's class
token reaches. So fine-tuning the last block needs, per image, the tokens that enter it, and only
the class token's path through it: keys and values from all 197 tokens, one query. The tokens
are extracted once (``extract_transfer_features.py --last-block-tokens``, bfloat16 tower, about
0.1 s per image on 2 cores, stored as float16: 0.3 MB per image), and a fold then trains on 2
CPU cores in about 30 s per epoch of 7,700 images.

For each fold (a fake folder held out, or none for the in-family run), on the grouped split the
protocol uses:
1. the probe is fitted on the frozen embeddings (cached features) of the training rows, as the
   protocol fits it (epoch 0: the frozen tower; its AUCs are the protocol's, up to the bfloat16
   tokens);
2. the last block, the post-LayerNorm, the projection and the probe's head are trained together
   (AdamW, class- and folder-balanced sampling, bfloat16 autocast unless ``--precision
   float32``, linear warm-up then cosine),
   the block at ``--lr-block``, the head at ``--lr-head``;
3. after every epoch: validation AUC per folder (the fold's other folders) and the held-out
   folder's AUC (its fakes against its own reals, or against the validation reals), as
   ``transfer.held_out_auc`` measures it.

The epoch count is fixed before the run (``--epochs``); the per-epoch held-out AUCs are printed
to show the trend, not to choose an epoch.

Usage:
    python scripts/extract_transfer_features.py DATA TOKENS/ --tower WHEEL --last-block-tokens
    python scripts/extract_transfer_features.py DATA SB_TOKENS/ --tower WHEEL --last-block-tokens \
        --self-blends 1 --groups groups.csv
    python scripts/tune_last_block.py DATA FEATURES/ TOKENS/ --self-blends BLENDS/ SB_TOKENS/ \
        --groups groups.csv --tower WHEEL --fold dfdc_faces224 [--fold ...] [--fold none] \
        --out RESULTS.json [--epochs 3] [--lr-block 1e-4] [--lr-head 1e-4]

FEATURES/ and BLENDS/ are the protocol's caches (``extract_transfer_features.py`` without
``--last-block-tokens``); TOKENS/ and SB_TOKENS/ must hold the same images in the same order.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from deepfake_toolkit.models.clip import ClipVisionTower, build_tower_from_file
from deepfake_toolkit.train import find_labelled_images, read_groups
from deepfake_toolkit.transfer import (SELF_BLEND_SOURCE, LinearHead, assign_split,
                                       balanced_weights, fit_probe, folder_table, held_out_auc,
                                       load_feature_cache, sigmoid, threshold_with_real_floor)


class LastBlockProbe(nn.Module):
    """The tower's last block on the class token's path, the post-LayerNorm, the projection and
    a linear head on the standardised embedding: a logit from the tokens entering the last block.

    Equal to running the whole last block and reading the class token (the other tokens' outputs
    never reach the embedding), at about a sixth of the block's work.
    """

    def __init__(self, tower: ClipVisionTower, head: LinearHead) -> None:
        super().__init__()
        self.block = copy.deepcopy(tower.layers[-1])
        self.post_layernorm = copy.deepcopy(tower.post_layernorm)
        self.visual_projection = copy.deepcopy(tower.visual_projection)
        self.register_buffer("feature_mean", torch.tensor(head.mean, dtype=torch.float32))
        self.register_buffer("feature_std", torch.tensor(head.std, dtype=torch.float32))
        self.head = nn.Linear(len(head.coef), 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor(head.coef, dtype=torch.float32)[None])
            self.head.bias.fill_(head.bias)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """The projected embedding, (N, embed_dim), from tokens (N, T, width)."""
        cls = self.block(tokens, queries=1)[:, 0]
        return self.visual_projection(self.post_layernorm(cls))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embeds = self.embed(tokens).float()
        return self.head((embeds - self.feature_mean) / self.feature_std).reshape(-1)


def load_tokens(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The chunks ``extract_transfer_features.py --last-block-tokens`` wrote: relative paths and
    tokens (N, T, width), float16."""
    chunks = sorted(c for c in Path(folder).glob("chunk_*.npz") if ".partial" not in c.name)
    if not chunks:
        raise SystemExit(f"no token chunks in {folder}")
    relative, tokens = [], []
    for chunk in chunks:
        with np.load(chunk, allow_pickle=True) as data:
            relative.append(data["relative"].astype(str))
            tokens.append(data["tokens"])
    return np.concatenate(relative), np.concatenate(tokens)


def logits_of(model: LastBlockProbe, tokens: np.ndarray, dtype: torch.dtype,
              batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad(), _autocast(dtype):
        for start in range(0, len(tokens), batch):
            out.append(model(torch.from_numpy(tokens[start:start + batch]).float()).float())
    return torch.cat(out).numpy().astype(np.float64)


def _autocast(dtype: torch.dtype):
    return torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)


def run_fold(fold: str | None, table: pd.DataFrame, embeds: np.ndarray, tokens: np.ndarray,
             is_val: np.ndarray, blends: tuple[pd.DataFrame, np.ndarray, np.ndarray] | None,
             tower: ClipVisionTower, args: argparse.Namespace) -> list[dict]:
    """One fold: the probe on frozen embeddings, then the last block tuned; AUCs per epoch."""
    labels = table["label"].to_numpy()
    sources = table["source"].to_numpy()
    out = sources == fold if fold else np.zeros(len(table), dtype=bool)
    train, val = ~is_val & ~out, is_val & ~out
    x_train, e_train = tokens[train], embeds[train]
    t_train = table[train][["label", "source"]].reset_index(drop=True)
    if blends is not None:
        blend_table, blend_embeds, blend_tokens = blends
        keep = blend_table["source"].to_numpy() != fold
        x_train = np.concatenate([x_train, blend_tokens[keep]])
        e_train = np.concatenate([e_train, blend_embeds[keep]])
        t_train = pd.concat([t_train, pd.DataFrame({"label": 1, "source": SELF_BLEND_SOURCE},
                                                   index=range(int(keep.sum())))],
                            ignore_index=True)
    y = t_train["label"].to_numpy()
    weights = balanced_weights(t_train)
    model = LastBlockProbe(tower, fit_probe(e_train, y, weights, args.probe_c))
    fake_folders = sorted(set(sources[labels == 1]) - {fold})

    def measure(epoch: int, logits: np.ndarray, **extra) -> dict:
        scores = sigmoid(logits)
        threshold = threshold_with_real_floor(scores[val], labels[val], sources[val])
        per_folder = folder_table(scores[val], table[val].reset_index(drop=True), threshold)
        entry = {"epoch": epoch, **extra,
                 "validation_auc": {f: per_folder[f]["auc"] for f in fake_folders},
                 "validation_real_accuracy": {f: v["real_accuracy"]
                                              for f, v in per_folder.items()
                                              if "real_accuracy" in v and f != "all"}}
        if fold:
            entry["held_out_auc"] = held_out_auc(scores[out], table[out],
                                                 scores[val & (labels == 0)])["auc"]
        print(json.dumps({"fold": fold or "none", **entry}), flush=True)
        return entry

    dtype = getattr(torch, args.precision)
    history = [measure(0, logits_of(model, tokens, dtype))]
    head_params = list(model.head.parameters())
    block_params = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    optimiser = torch.optim.AdamW([{"params": block_params, "lr": args.lr_block},
                                   {"params": head_params, "lr": args.lr_head}],
                                  weight_decay=0.0)
    steps = len(x_train) // args.batch
    total = steps * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * s / total)))
    loss_fn = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(args.seed)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = rng.choice(len(x_train), size=steps * args.batch, p=weights / weights.sum())
        losses = []
        for step in range(steps):
            rows = order[step * args.batch:(step + 1) * args.batch]
            with _autocast(dtype):
                logit = model(torch.from_numpy(x_train[rows]).float())
            loss = loss_fn(logit.float(), torch.from_numpy(y[rows]).float())
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        history.append(measure(epoch, logits_of(model, tokens, dtype),
                               loss=float(np.mean(losses))))
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("features")
    parser.add_argument("tokens")
    parser.add_argument("--self-blends", nargs=2, metavar=("BLENDS", "SB_TOKENS"))
    parser.add_argument("--groups")
    parser.add_argument("--tower", required=True)
    parser.add_argument("--fold", action="append", required=True,
                        help="a fake folder to hold out, or 'none' (repeat for several)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr-block", type=float, default=1e-4)
    parser.add_argument("--lr-head", type=float, default=1e-4)
    parser.add_argument("--probe-c", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16",
                        help="autocast of the block's forward pass (default bfloat16)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    table, arrays = load_feature_cache(args.features)
    relative, tokens = load_tokens(args.tokens)
    if len(relative) != len(table) or (relative != table["relative"].to_numpy()).any():
        raise SystemExit(f"{args.tokens} and {args.features} hold other images or another order")
    every = find_labelled_images(args.data, read_groups(args.groups) if args.groups else None)
    is_val = assign_split(table, every)
    blends = None
    if args.self_blends:
        blend_table, blend_arrays = load_feature_cache(args.self_blends[0])
        blend_relative, blend_tokens = load_tokens(args.self_blends[1])
        if (len(blend_relative) != len(blend_table)
                or (blend_relative != blend_table["relative"].to_numpy()).any()):
            raise SystemExit("the self-blend tokens and features hold other images")
        blends = (blend_table, blend_arrays["embeds"], blend_tokens)
    tower = build_tower_from_file(args.tower)
    results = {"recipe": {k: v for k, v in vars(args).items() if k not in ("fold", "out")},
               "folds": {}}
    for fold in args.fold:
        results["folds"][fold] = run_fold(None if fold == "none" else fold, table,
                                          arrays["embeds"], tokens, is_val, blends, tower, args)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"{len(args.fold)} fold(s) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
