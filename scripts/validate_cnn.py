"""Score the CNN's (``cnn``, the default model's CNN branch) validation split through the inference
pipeline and check confounds.

Rebuilds the training run's split (same seed, groups and folders), scores the validation images
with `classify_files` exactly as a user would, and reports per-folder AUC plus how well image
size alone separates the classes and predicts the score (a shortcut check). It also scores
scikit-image's public-domain sample photos, which the tests use as reference scores.

With --into, both results are added to a training record (the JSON `deepfake-toolkit train`
writes beside the weights) under "validation_through_pipeline" and "reference_scores".

With --face-detector retinaface it scores the same split with RetinaFace crops instead of the
MTCNN crops the model was trained on (to check that a faster detector keeps the model's quality),
its boxes on MTCNN's frame (faces.RETINAFACE_TO_MTCNN) unless --retinaface-boxes raw.
--detect-max-side and --mtcnn-search score it with another MTCNN detection size or search floor
(e.g. 640 and scaled, the faster setting), all other face-crop settings the model's own.
--upscale PX scores the images resized to PX on their longer side (the split's photos are at most
512 px, so a detection size only acts on them that way), --sample N a seeded sample of them.
--model NAME scores another registered model on the same split, with its own face-crop
settings (the reference scores are the CNN's, and are left out then).

Usage: python scripts/validate_cnn.py DATA_ROOT GROUPS.csv OUT.json
           [--weights-dir DIR] [--into RECORD.json] [--face-detector mtcnn|retinaface]
           [--model NAME] [--retinaface-boxes mtcnn|raw] [--scores SCORES.csv]
           [--detect-max-side PX] [--mtcnn-search PX|scaled] [--sample N] [--upscale PX]
"""

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from deepfake_toolkit import classify_files
from deepfake_toolkit.cli import parse_mtcnn_search
from deepfake_toolkit.faces import FACE_DETECTORS, RETINAFACE_BOX_FRAMES
from deepfake_toolkit.models import load_model
from deepfake_toolkit.results import box_to_text
from deepfake_toolkit.train import (
    TrainConfig,
    find_labelled_images,
    folder_metrics,
    read_groups,
    split_by_source,
)

REFERENCE_IMAGES = ("astronaut", "coffee", "chelsea", "camera")


def validate(root: str, groups_csv: str, weights_dir: str | None,
             face_detector: str = "mtcnn", model: str = "cnn", retinaface_boxes: str = "mtcnn",
             scores_csv: str | None = None, sample: int | None = None,
             upscale: int | None = None, **detection: int | str | None) -> dict:
    config = TrainConfig()
    table = find_labelled_images(root, read_groups(groups_csv))
    val = table[split_by_source(table, config.val_fraction, config.seed)].reset_index(drop=True)
    if sample is not None and sample < len(val):
        val = val.sample(n=sample, random_state=config.seed).sort_index().reset_index(drop=True)
    detector = load_model(model, weights_dir=weights_dir)
    # The model's own face-crop settings, with only the detector (and the MTCNN detection size
    # and search floor given in ``detection``) changed.
    face_config = dataclasses.replace(detector.scoring.face, detector=face_detector,
                                      retinaface_boxes=retinaface_boxes, **detection)
    with tempfile.TemporaryDirectory() as scratch:
        paths = val["path"].tolist()
        if upscale:
            paths = [_upscaled(path, Path(scratch) / f"{index:05d}.png", upscale)
                     for index, path in enumerate(paths)]
        scored = classify_files(paths, detector, progress=False, face_config=face_config)
    val = val.assign(fake_score=scored["fake_score"].to_numpy(),
                     pixels=(scored["width"] * scored["height"]).astype(float).to_numpy())
    if scores_csv:
        val.assign(region=scored["region"].to_numpy(),
                   face_box=scored["face_box"].map(box_to_text).to_numpy()
                   ).drop(columns=["path"]).to_csv(scores_csv, index=False)
    threshold = detector.spec.threshold
    metrics = folder_metrics(val, threshold, n_bootstrap=200)
    reals = val[val["label"] == 0]
    return {
        "images": len(val), "threshold": threshold, "metrics": metrics,
        **({"upscaled_to": upscale} if upscale else {}),
        "model": model, "face_detector": face_detector,
        "face_crop": dataclasses.asdict(face_config),
        "images_per_second": scored.attrs["images_per_second"],
        "shortcut_check": {
            "auc_of_pixel_count_for_label": roc_auc_score(val["label"], val["pixels"]),
            "corr_log_pixels_vs_score": float(np.corrcoef(np.log(val["pixels"]),
                                                          val["fake_score"])[0, 1]),
            "corr_log_pixels_vs_score_reals_only": float(np.corrcoef(
                np.log(reals["pixels"]), reals["fake_score"])[0, 1])},
    }


def _upscaled(path: str, out: Path, side: int) -> str:
    """The image at ``path`` resized (Lanczos) so that its longer side is ``side`` pixels, saved
    losslessly at ``out``."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = side / max(image.size)
        image.resize((round(image.width * scale), round(image.height * scale)),
                     Image.Resampling.LANCZOS).save(out)
    return str(out)


def reference_scores(weights_dir: str | None) -> dict:
    from skimage import data

    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for name in REFERENCE_IMAGES:
            paths.append(Path(folder) / f"{name}.png")
            Image.fromarray(getattr(data, name)()).save(paths[-1])
        frame = classify_files(paths, "cnn", progress=False, num_workers=0, device="cpu",
                               weights_dir=weights_dir)
    scores = {Path(path).stem: {"fake_score": round(float(score), 5), "region": region}
              for path, score, region in zip(frame["path"], frame["fake_score"], frame["region"])}
    return {"note": "scikit-image sample photos saved as PNG, classify_files(face_crop=True, "
                    "no_face=\"whole\") on CPU", "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("groups")
    parser.add_argument("out")
    parser.add_argument("--weights-dir", help="folder holding the weights to validate "
                                              "(default: the project's weights/)")
    parser.add_argument("--into", help="training record to add the results to")
    parser.add_argument("--face-detector", choices=FACE_DETECTORS, default="mtcnn")
    parser.add_argument("--retinaface-boxes", choices=RETINAFACE_BOX_FRAMES, default="mtcnn",
                        help="RetinaFace's boxes on MTCNN's frame (default) or its own")
    parser.add_argument("--scores", help="also write each image's score and face box to this CSV "
                                          "(the box as classify's CSV writes it)")
    parser.add_argument("--model", default="cnn", help="registered model to validate (default: "
                                                         "cnn)")
    parser.add_argument("--detect-max-side", type=int, metavar="PX",
                        help="MTCNN/RetinaFace detection size (default: the model's)")
    parser.add_argument("--mtcnn-search", type=parse_mtcnn_search, metavar="PX|scaled",
                        help="smallest face MTCNN searches for (default: the model's)")
    parser.add_argument("--sample", type=int, metavar="N",
                        help="score a seeded random sample of N validation images")
    parser.add_argument("--upscale", type=int, metavar="PX",
                        help="score the images resized so that their longer side is PX (for "
                             "settings that act only on large photos, e.g. --detect-max-side)")
    args = parser.parse_args()
    detection = {key: value for key, value in (("detect_max_side", args.detect_max_side),
                                               ("mtcnn_search", args.mtcnn_search))
                 if value is not None}
    record = validate(args.root, args.groups, args.weights_dir, args.face_detector, args.model,
                      args.retinaface_boxes, args.scores, args.sample, args.upscale,
                      **detection)
    references = reference_scores(args.weights_dir) if args.model == "cnn" else {"scores": {}}
    Path(args.out).write_text(json.dumps({**record, "reference_scores": references},
                                         indent=1, default=float))
    if args.into:
        training = json.loads(Path(args.into).read_text())
        training.update(validation_through_pipeline=record)
        if references["scores"]:
            training.update(reference_scores=references)
        Path(args.into).write_text(json.dumps(training, indent=1, default=float) + "\n")
    for name, values in record["metrics"].items():
        print(f"{name:26s} auc {values.get('auc', float('nan')):.3f} "
              f"acc {values.get('accuracy', float('nan')):.3f}")
    print(json.dumps(record["shortcut_check"]))
    print(json.dumps(references["scores"]))


if __name__ == "__main__":
    main()
