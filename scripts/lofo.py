"""Leave-one-folder-out: train the default recipe without a source folder, then score that folder.

This is the honest measure of generalisation to a generator or manipulation the model never saw.
For a held-out folder with real images, its fakes are compared with its own reals; for a fake-only
folder, with the validation reals of the other folders (which training never saw either).

Every run uses the shipped recipe (TrainConfig's defaults) unless an option changes it.

Usage:
    python scripts/lofo.py DATA_ROOT OUT.json [--groups GROUPS.csv] [--folders A B ...]
                           [--epochs N] [--lr LR] [--steps-per-epoch N] [--self-blend P]
                           [--paired-real-weight W] [--device D] [--scores DIR]

--scores DIR writes each fold's per-image scores (DIR/<folder>.csv: relative, label, source,
part = validation | holdout, fake_score) so that a later stacking (scripts/transfer_protocol.py
--fold-cnn-scores DIR) can use the CNN that never saw the folder.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from deepfake_toolkit.metrics import binary_metrics
from deepfake_toolkit.train import TrainConfig, find_labelled_images, \
    read_groups, train


def held_out_metrics(result) -> dict:
    holdout = result.holdout
    if not (holdout["label"] == 0).any():
        reals = result.validation[result.validation["label"] == 0]
        holdout = pd.concat([holdout, reals])
    values = binary_metrics(holdout["label"].to_numpy(), holdout["fake_score"].to_numpy(),
                            result.threshold, n_bootstrap=200)
    return {k: values[k] for k in ("n_real", "n_fake", "auc", "auc_low", "auc_high",
                                   "average_precision", "balanced_accuracy", "eer")}


def write_fold_scores(result, out: Path) -> None:
    columns = ["relative", "label", "source", "fake_score"]
    parts = [result.validation[columns].assign(part="validation"),
             result.holdout[columns].assign(part="holdout")]
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(parts, ignore_index=True).to_csv(out, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--groups")
    parser.add_argument("--folders", nargs="*")
    recipe = TrainConfig()
    parser.add_argument("--epochs", type=int, default=recipe.epochs)
    parser.add_argument("--lr", type=float, default=recipe.lr)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--self-blend", type=float, default=recipe.augment.self_blend_prob)
    parser.add_argument("--paired-real-weight", type=float, default=recipe.paired_real_weight)
    parser.add_argument("--device", default=recipe.device)
    parser.add_argument("--workers", type=int, default=recipe.workers)
    parser.add_argument("--cache-dir", default=recipe.cache_dir)
    parser.add_argument("--scores", metavar="DIR", help="write each fold's per-image scores here")
    args = parser.parse_args()
    groups = read_groups(args.groups) if args.groups else None
    table = find_labelled_images(args.data, groups)
    fake_folders = sorted(table.loc[table["label"] == 1, "source"].unique())
    results = {}
    for folder in args.folders or fake_folders:
        config = replace(recipe, epochs=args.epochs, lr=args.lr,
                         steps_per_epoch=args.steps_per_epoch, device=args.device,
                         workers=args.workers, cache_dir=args.cache_dir,
                         paired_real_weight=args.paired_real_weight, holdout_sources=(folder,),
                         augment=replace(recipe.augment, self_blend_prob=args.self_blend))
        result = train(args.data, None, config, groups=groups, progress=False)
        results[folder] = {"held_out": held_out_metrics(result),
                           "validation_auc": result.metrics()["validation"]["all"].get("auc"),
                           "epochs": len(result.history), "seconds": result.seconds}
        print(folder, json.dumps(results[folder]["held_out"]), flush=True)
        if args.scores:
            write_fold_scores(result, Path(args.scores) / f"{folder}.csv")
        with open(args.out, "w") as stream:
            json.dump({"options": vars(args), "results": results}, stream, indent=1)


if __name__ == "__main__":
    main()
