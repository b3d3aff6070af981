"""Leave-one-folder-out: train the default recipe without a source folder, then score that folder.

This is the honest measure of generalisation to a generator or manipulation the model never saw.
For a held-out folder with real images, its fakes are compared with its own reals; for a fake-only
folder, with the validation reals of the other folders (which training never saw either).

Usage:
    python scripts/lofo.py DATA_ROOT OUT.json [--groups GROUPS.csv] [--folders A B ...]
                           [--epochs N] [--steps-per-epoch N] [--self-blend P] [--device D]
"""

import argparse
import json
from dataclasses import replace

import pandas as pd

from deepfake_toolkit.metrics import binary_metrics
from deepfake_toolkit.train import AugmentConfig, TrainConfig, find_labelled_images, \
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--groups")
    parser.add_argument("--folders", nargs="*")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--self-blend", type=float, default=0.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", default="~/.cache/deepfake_toolkit")
    args = parser.parse_args()
    groups = read_groups(args.groups) if args.groups else None
    table = find_labelled_images(args.data, groups)
    fake_folders = sorted(table.loc[table["label"] == 1, "source"].unique())
    results = {}
    for folder in args.folders or fake_folders:
        config = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
                             device=args.device, workers=args.workers, cache_dir=args.cache_dir,
                             holdout_sources=(folder,),
                             augment=replace(AugmentConfig(), self_blend_prob=args.self_blend))
        result = train(args.data, None, config, groups=groups, progress=False)
        results[folder] = {"held_out": held_out_metrics(result),
                           "validation_auc": result.metrics()["validation"]["all"].get("auc"),
                           "epochs": len(result.history), "seconds": result.seconds}
        print(folder, json.dumps(results[folder]["held_out"]), flush=True)
        with open(args.out, "w") as stream:
            json.dump({"self_blend": args.self_blend, "epochs": args.epochs,
                       "steps_per_epoch": args.steps_per_epoch, "results": results}, stream,
                      indent=1)


if __name__ == "__main__":
    main()
