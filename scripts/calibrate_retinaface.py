"""Fit where MTCNN's box edges lie relative to RetinaFace's (``faces.RETINAFACE_TO_MTCNN``).

Both detectors run on a seeded sample of the TRAINING split of the grouped split ``deepfake-toolkit
train`` draws (``--groups``, as for training); for every image where both find a face (the largest
face of each, default ``FaceCropConfig`` filters, matched when their boxes overlap with IoU >= 0.3),
each edge's offset is measured - left and right in RetinaFace box widths, top and bottom in its
heights - and the median of each is the fitted calibration. It is then checked on a sample of the
VALIDATION split: the IoU of the crops the default crop settings cut (what a model sees) from
MTCNN's boxes and from RetinaFace's, raw and calibrated, per folder.

Usage:
    python scripts/calibrate_retinaface.py DATA_ROOT GROUPS.csv OUT.json [--per-folder 250]
        [--val-per-folder 100] [--workers 2]
"""

import argparse
import dataclasses
import json
import time
from multiprocessing import get_context

import numpy as np
import pandas as pd
import torch

from deepfake_toolkit.faces import (FaceCropConfig, FaceCropper, box_iou, crop_window,
                                    mtcnn_frame)
from deepfake_toolkit.images import load_image
from deepfake_toolkit.train import TrainConfig, find_labelled_images, read_groups, split_by_source

MIN_IOU = 0.3


_croppers: dict[str, FaceCropper] = {}


def detect_both(path: str):
    """(image size, MTCNN's largest box, RetinaFace's raw largest box); a box is None when none."""
    torch.set_num_threads(1)
    if not _croppers:
        _croppers["mtcnn"] = FaceCropper(FaceCropConfig())
        _croppers["retinaface"] = FaceCropper(FaceCropConfig(detector="retinaface",
                                                             retinaface_boxes="raw"))
    image = load_image(path)
    boxes = {}
    for name, cropper in _croppers.items():
        faces = cropper.detect([image])[0]
        boxes[name] = faces[0].box if faces else None
    return image.size, boxes["mtcnn"], boxes["retinaface"]


def sample(table, mask, per_folder: int, seed: int):
    part = table[mask]
    return pd.concat([group.sample(min(len(group), per_folder), random_state=seed)
                      for _, group in part.groupby("source")])


def offsets_of(m, r) -> list[float]:
    width, height = r[2] - r[0], r[3] - r[1]
    return [(m[0] - r[0]) / width, (m[1] - r[1]) / height,
            (m[2] - r[2]) / width, (m[3] - r[3]) / height]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("groups")
    parser.add_argument("out")
    parser.add_argument("--per-folder", type=int, default=250)
    parser.add_argument("--val-per-folder", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = TrainConfig()
    table = find_labelled_images(args.data, read_groups(args.groups))
    is_val = split_by_source(table, config.val_fraction, config.seed)
    fit_rows = sample(table, ~is_val, args.per_folder, args.seed)
    check_rows = sample(table, is_val, args.val_per_folder, args.seed)
    started = time.perf_counter()
    with get_context("spawn").Pool(args.workers) as pool:
        fit = pool.map(detect_both, fit_rows["path"].tolist(), chunksize=8)
        check = pool.map(detect_both, check_rows["path"].tolist(), chunksize=8)

    pairs = [(m, r) for _, m, r in fit
             if m is not None and r is not None and box_iou(m, r) >= MIN_IOU]
    offsets = np.array([offsets_of(m, r) for m, r in pairs])
    fitted = tuple(round(float(v), 4) for v in np.median(offsets, axis=0))
    spread = [[round(float(v), 4) for v in np.percentile(offsets[:, i], [25, 75])]
              for i in range(4)]

    crop = FaceCropConfig()
    per_folder: dict[str, dict] = {}
    for folder, (size, m, r) in zip(check_rows["source"], check):
        entry = per_folder.setdefault(folder, {"images": 0, "mtcnn_only": 0, "retinaface_only": 0,
                                               "raw": [], "calibrated": []})
        entry["images"] += 1
        if (m is None) != (r is None):
            entry["mtcnn_only" if r is None else "retinaface_only"] += 1
        if m is None or r is None or box_iou(m, r) < MIN_IOU:
            continue
        reference = crop_window(m, size, crop)
        entry["raw"].append(box_iou(reference, crop_window(r, size, crop)))
        calibrated = crop_window(mtcnn_frame(r, fitted), size, crop)
        entry["calibrated"].append(box_iou(reference, calibrated))
    summary = {}
    for folder, entry in sorted(per_folder.items()):
        summary[folder] = {
            "images": entry["images"], "matched": len(entry["raw"]),
            "mtcnn_only": entry["mtcnn_only"], "retinaface_only": entry["retinaface_only"],
            "crop_iou_raw_median": float(np.median(entry["raw"])) if entry["raw"] else None,
            "crop_iou_calibrated_median": (float(np.median(entry["calibrated"]))
                                           if entry["calibrated"] else None),
            "crop_iou_calibrated_p10": (float(np.percentile(entry["calibrated"], 10))
                                        if entry["calibrated"] else None)}
    record = {"fit_images": len(fit_rows), "fit_pairs": len(pairs),
              "offsets_left_top_right_bottom": fitted, "offsets_iqr": spread,
              "check_on_validation_split": summary,
              "crop": dataclasses.asdict(crop), "seconds": time.perf_counter() - started}
    with open(args.out, "w") as handle:
        json.dump(record, handle, indent=1)
    print(f"fitted on {len(pairs)} matched faces of {len(fit_rows)} training images: "
          f"RETINAFACE_TO_MTCNN = {fitted} (IQR {spread})")
    for folder, values in summary.items():
        print(f"{folder:26s} matched {values['matched']:3d}/{values['images']:3d} crop IoU "
              f"raw {values['crop_iou_raw_median'] or float('nan'):.3f} calibrated "
              f"{values['crop_iou_calibrated_median'] or float('nan'):.3f} (p10 "
              f"{values['crop_iou_calibrated_p10'] or float('nan'):.3f})")


if __name__ == "__main__":
    main()
