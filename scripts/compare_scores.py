"""Compare two scorings of the same images: how a change of settings (a face detector, its search,
a precision) moves a model's scores and its detection quality.

Reads two CSVs written by ``scripts/validate_cnn.py --scores`` for the same validation split and
model (A: the reference, B: the changed run) and prints, and writes as JSON with --out:
- per folder with both classes, AUC of A and of B, their difference, and a 95% paired bootstrap
  interval of the difference (images resampled together);
- the pooled AUC of each;
- how far scores move (median and 90th percentile of |B - A|) and how many verdicts flip at the
  model's threshold (--threshold);
- how many images change region (face crop <-> whole image) and the IoU of the face boxes where
  both found one (median, 10th percentile, smallest), per folder.

Usage: python scripts/compare_scores.py A.csv B.csv --threshold T [--out OUT.json]
                                        [--bootstrap 1000] [--seed 0]
"""

import argparse
import json

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from deepfake_toolkit.faces import box_iou
from deepfake_toolkit.results import box_from_text


def compare(a: pd.DataFrame, b: pd.DataFrame, threshold: float, n_bootstrap: int = 1000,
            seed: int = 0) -> dict:
    if len(a) != len(b) or not (a["relative"].to_numpy() == b["relative"].to_numpy()).all():
        raise ValueError("the two CSVs do not hold the same images in the same order")
    rng = np.random.default_rng(seed)
    moved = (b["fake_score"] - a["fake_score"]).abs()
    flipped = (a["fake_score"] >= threshold) != (b["fake_score"] >= threshold)
    ious = pd.Series([box_iou(p, q) if p and q else np.nan
                      for p, q in zip(map(box_from_text, a["face_box"]),
                                      map(box_from_text, b["face_box"]))])
    folders = {}
    for source, rows in a.groupby("source"):
        entry = {"images": len(rows), "flips": int(flipped[rows.index].sum()),
                 "median_abs_change": float(moved[rows.index].median()),
                 "box_iou_median": float(ious[rows.index].median()),
                 "box_iou_p10": float(ious[rows.index].quantile(0.1))}
        labels = rows["label"].to_numpy()
        if labels.min() != labels.max():
            score_a = rows["fake_score"].to_numpy()
            score_b = b.loc[rows.index, "fake_score"].to_numpy()
            diffs = []
            for _ in range(n_bootstrap):
                pick = rng.integers(0, len(labels), len(labels))
                if labels[pick].min() != labels[pick].max():
                    diffs.append(roc_auc_score(labels[pick], score_b[pick])
                                 - roc_auc_score(labels[pick], score_a[pick]))
            auc_a, auc_b = roc_auc_score(labels, score_a), roc_auc_score(labels, score_b)
            entry.update(auc_a=auc_a, auc_b=auc_b, auc_change=auc_b - auc_a,
                         auc_change_95=[float(np.percentile(diffs, 2.5)),
                                        float(np.percentile(diffs, 97.5))])
        folders[source] = entry
    return {
        "images": len(a), "threshold": threshold, "folders": folders,
        "pooled_auc_a": roc_auc_score(a["label"], a["fake_score"]),
        "pooled_auc_b": roc_auc_score(a["label"], b["fake_score"]),
        "median_abs_change": float(moved.median()), "p90_abs_change": float(moved.quantile(0.9)),
        "flips": int(flipped.sum()), "region_changes": int((a["region"] != b["region"]).sum()),
        "box_iou_median": float(ious.median()), "box_iou_p10": float(ious.quantile(0.1)),
        "box_iou_min": float(ious.min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--threshold", type=float, required=True,
                        help="the model's operating threshold (verdict flips are counted at it)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = compare(pd.read_csv(args.a), pd.read_csv(args.b), args.threshold, args.bootstrap,
                     args.seed)
    for source, entry in result["folders"].items():
        line = (f"{source:26s} {entry['images']:5d} images, {entry['flips']:3d} verdicts flip, "
                f"median |change| {entry['median_abs_change']:.3f}, box IoU median "
                f"{entry['box_iou_median']:.3f}")
        if "auc_a" in entry:
            low, high = entry["auc_change_95"]
            line += (f"; AUC {entry['auc_a']:.3f} -> {entry['auc_b']:.3f} "
                     f"({entry['auc_change']:+.4f}, 95% {low:+.4f} to {high:+.4f})")
        print(line)
    print(f"pooled AUC {result['pooled_auc_a']:.3f} -> {result['pooled_auc_b']:.3f}; "
          f"{result['flips']} of {result['images']} verdicts flip; {result['region_changes']} "
          f"change region; box IoU median {result['box_iou_median']:.3f} (smallest "
          f"{result['box_iou_min']:.3f})")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
            handle.write("\n")


if __name__ == "__main__":
    main()
