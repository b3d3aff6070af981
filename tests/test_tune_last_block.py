"""scripts/tune_last_block.py: the last block on the class token's path is the tower's own
embedding, and a fold trains and reports on a tiny cache."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from deepfake_toolkit.models.clip import ClipTowerConfig, ClipVisionTower
from deepfake_toolkit.transfer import balanced_weights, fit_probe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
extract = pytest.importorskip("extract_transfer_features")
tune = pytest.importorskip("tune_last_block")

TINY = ClipTowerConfig(image_size=224, patch_size=56, width=32, layers=3, heads=4, mlp_width=64,
                       embed_dim=16)


@pytest.fixture(scope="module")
def tower() -> ClipVisionTower:
    torch.manual_seed(0)
    tower = ClipVisionTower(TINY)
    with torch.no_grad():
        for parameter in tower.parameters():
            parameter.normal_(0, 0.2)
    return tower.eval()


def _crops(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 64, 3), dtype=np.uint8))
            for i in range(n)]


def test_the_class_token_path_of_the_last_block_gives_the_towers_embedding(tower):
    crops = _crops(5)
    tokens = extract.last_block_tokens(crops, tower, per_pass=2, dtype=torch.float32)
    assert tokens.shape == (5, 17, 32)
    x = (torch.stack([extract._pixels(c) for c in crops]) - extract.CLIP_MEAN_T) \
        / extract.CLIP_STD_T
    with torch.no_grad():
        expected = tower.forward_features(x)["embeds"]
        head = fit_probe(expected.numpy(), np.array([0, 1, 0, 1, 0]), np.ones(5), 1.0)
        probe = tune.LastBlockProbe(tower, head)
        embeds = probe.embed(tokens)
        logits = probe(tokens).numpy()
    torch.testing.assert_close(embeds, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, head.logit(expected.numpy()), rtol=1e-4, atol=1e-4)
    # The tower's own block: the module is a copy, tuning it leaves the tower alone.
    assert probe.block is not tower.layers[-1]


def test_a_fold_trains_the_block_and_reports_the_held_out_folder(tower):
    rng = np.random.default_rng(1)
    sources = ["real_a"] * 16 + ["real_b"] * 16 + ["fake_x"] * 16 + ["fake_y"] * 16
    labels = [0] * 32 + [1] * 32
    table = pd.DataFrame({"relative": [f"{s}/{i}.jpg" for i, s in enumerate(sources)],
                          "label": labels, "source": sources})
    crops = _crops(64, seed=2)
    for crop, label in zip(crops, labels):  # fakes a little brighter: something to learn
        if label:
            crop.paste((200, 200, 200), (0, 0, 20, 20))
    tokens = extract.last_block_tokens(crops, tower, dtype=torch.float32).numpy()
    with torch.no_grad():
        embeds = tune.LastBlockProbe(tower, fit_probe(rng.standard_normal((4, 16)),
                                                      np.array([0, 1, 0, 1]), np.ones(4), 1.0)
                                     ).embed(torch.from_numpy(tokens)).numpy()
    is_val = np.tile([False, False, False, True], 16)
    args = argparse.Namespace(probe_c=0.1, lr_block=1e-3, lr_head=1e-2, epochs=2, batch=8, seed=0,
                              precision="float32")
    before = [p.detach().clone() for p in tower.parameters()]
    history = tune.run_fold("fake_y", table, embeds, tokens, is_val, None, tower, args)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert set(history[-1]["validation_auc"]) == {"fake_x"}
    assert 0.0 <= history[-1]["held_out_auc"] <= 1.0 and history[-1]["loss"] > 0
    # Epoch 0 is the probe on the frozen embeddings: its held-out AUC is the plain probe's.
    train = ~is_val & (table["source"] != "fake_y").to_numpy()
    head = fit_probe(embeds[train], table["label"][train].to_numpy(),
                     balanced_weights(table[train]), 0.1)
    out = (table["source"] == "fake_y").to_numpy()
    plain = tune.held_out_auc(1 / (1 + np.exp(-head.logit(embeds[out]))), table[out],
                              1 / (1 + np.exp(-head.logit(embeds[is_val & ~out
                                                                 & (table.label == 0).to_numpy()]))))
    assert history[0]["held_out_auc"] == pytest.approx(plain["auc"], abs=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(before, tower.parameters()))
