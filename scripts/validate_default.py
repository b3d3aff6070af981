"""Score the default model's validation split through the inference pipeline and check confounds.

Rebuilds the training run's split (same seed, groups and folders), scores the validation images
with `classify_files` exactly as a user would, and reports per-folder AUC plus how well image
size alone separates the classes and predicts the score (a shortcut check).

Usage: python scripts/validate_default.py DATA_ROOT GROUPS.csv OUT.json
"""

import json
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from deepfake_toolkit import classify_files
from deepfake_toolkit.train import TrainConfig, find_labelled_images, folder_metrics, \
    read_groups, split_by_source


def main(root: str, groups_csv: str, out: str) -> None:
    config = TrainConfig()
    table = find_labelled_images(root, read_groups(groups_csv))
    val = table[split_by_source(table, config.val_fraction, config.seed)].reset_index(drop=True)
    scored = classify_files(val["path"].tolist(), "default", progress=False)
    val = val.assign(fake_score=scored["fake_score"].to_numpy(),
                     pixels=(scored["width"] * scored["height"]).astype(float).to_numpy())
    from deepfake_toolkit.models import load_model

    threshold = load_model("default").spec.threshold
    metrics = folder_metrics(val, threshold, n_bootstrap=200)
    size_vs_label = roc_auc_score(val["label"], val["pixels"])
    size_vs_score = float(np.corrcoef(np.log(val["pixels"]), val["fake_score"])[0, 1])
    reals = val[val["label"] == 0]
    real_size_vs_score = float(np.corrcoef(np.log(reals["pixels"]), reals["fake_score"])[0, 1])
    record = {"images": len(val), "threshold": threshold, "metrics": metrics,
              "images_per_second": scored.attrs["images_per_second"],
              "shortcut_check": {"auc_of_pixel_count_for_label": size_vs_label,
                                 "corr_log_pixels_vs_score": size_vs_score,
                                 "corr_log_pixels_vs_score_reals_only": real_size_vs_score}}
    with open(out, "w") as stream:
        json.dump(record, stream, indent=1, default=float)
    for name, values in metrics.items():
        print(f"{name:26s} auc {values.get('auc', float('nan')):.3f} "
              f"acc {values.get('accuracy', float('nan')):.3f}")
    print(json.dumps(record["shortcut_check"]))


if __name__ == "__main__":
    main(*sys.argv[1:])
