"""How often the stability check flips a model's verdict (--model, default: the default model), and
what provenance costs.

Scores a labelled folder's validation split (the training run's split: same seed, groups and
folders), or a random sample of it, with `classify_files(stability=True)` exactly as a user
would, and prints the share of scored images labelled "uncertain" because the verdict flipped
under JPEG 90 / JPEG 75 / downscale 0.75, per class and per source folder, the score spread,
and the time `read_provenance` takes per file.

Usage: python scripts/stability_rates.py DATA_ROOT [--groups GROUPS.csv] [--n 300]
           [--no-face-crop] [--weights-dir DIR] [--model NAME] [--out per_image.csv]
"""

import argparse
import time

import numpy as np

from deepfake_toolkit import classify_files
from deepfake_toolkit.models import load_model
from deepfake_toolkit.provenance import read_provenance
from deepfake_toolkit.results import write_csv
from deepfake_toolkit.train import TrainConfig, find_labelled_images, read_groups, split_by_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--groups")
    parser.add_argument("--n", type=int, default=300, help="images drawn from the validation "
                        "split (0: all of it)")
    parser.add_argument("--no-face-crop", action="store_true")
    parser.add_argument("--weights-dir")
    parser.add_argument("--model", default="default")
    parser.add_argument("--out")
    args = parser.parse_args()

    config = TrainConfig()
    table = find_labelled_images(args.root, read_groups(args.groups) if args.groups else None)
    val = table[split_by_source(table, config.val_fraction, config.seed)].reset_index(drop=True)
    if args.n and args.n < len(val):
        val = val.sample(n=args.n, random_state=0).reset_index(drop=True)

    started = time.perf_counter()
    for path in val["path"]:
        read_provenance(path)
    provenance_ms = (time.perf_counter() - started) / len(val) * 1e3

    detector = load_model(args.model, weights_dir=args.weights_dir)
    started = time.perf_counter()
    scored = classify_files(val["path"].tolist(), detector, face_crop=not args.no_face_crop,
                            stability=True, progress=False)
    seconds = time.perf_counter() - started
    scored = scored.assign(label_true=val["label"].map({0: "real", 1: "fake"}).to_numpy(),
                           source=val["source"].to_numpy())
    if args.out:
        write_csv(scored, args.out)
    done = scored[scored["fake_score"].notna()]
    flipped = done["stability_reason"] != ""
    print(f"{len(val)} validation images of {args.root}, face crop "
          f"{'off' if args.no_face_crop else 'on'}, threshold {detector.spec.threshold}")
    print(f"provenance: {provenance_ms:.2f} ms per file; classify with stability: "
          f"{seconds / len(val) * 1e3:.0f} ms per file")
    print(f"verdict flipped (uncertain): {flipped.sum()} of {len(done)} = {flipped.mean():.1%}; "
          f"score spread median {done['stability_spread'].median():.3f}, "
          f"90th percentile {np.nanpercentile(done['stability_spread'], 90):.3f}")
    for key in ("label_true", "source"):
        rates = done.assign(flipped=flipped).groupby(key)["flipped"].agg(["sum", "count", "mean"])
        print(rates.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
