"""Record the CLIP models' scores (clip_probe, cnn_clip_fusion and the default, the probe pair) on
the offline reference photos into their record.

The photos are scikit-image's samples saved as PNG (astronaut, coffee, chelsea, camera), scored by
``classify_files`` with the face crop on, as for the CNN; tests/test_clip.py checks
the shipped weights against these values whenever the CLIP tower is present.

Usage:
    python scripts/clip_reference_scores.py WEIGHTS_DIR   (the tower in a weight folder)
"""

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image
from skimage import data

from deepfake_toolkit.models.loading import recorded_policy
from deepfake_toolkit.pipeline import classify_files

NAMES = ("astronaut", "coffee", "chelsea", "camera")


def main(weights_dir: str) -> None:
    record_path = Path(weights_dir) / "clip_transfer.json"
    record = json.loads(record_path.read_text())
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for name in NAMES:
            path = Path(folder) / f"{name}.png"
            Image.fromarray(getattr(data, name)()).save(path)
            paths.append(path)
        scores = {}
        for model in ("clip_probe", "cnn_clip_fusion", "default"):
            frame = classify_files(paths, model, weights_dir=weights_dir, progress=False,
                                   num_workers=0, device="cpu")
            scores[model] = {Path(p).stem: {"fake_score": round(float(s), 5), "region": r}
                             for p, s, r in zip(frame["path"], frame["fake_score"],
                                                frame["region"])}
            print(model, json.dumps(scores[model]))
    # Each model's own face-crop settings (its weight file's policy), which the scores used.
    face_crops = {model: dataclasses.asdict(recorded_policy(model, weights_dir).face)
                  for model in scores}
    earlier = record.get("reference_scores", {})
    record["reference_scores"] = {
        "note": "scikit-image sample photos saved as PNG, classify_files(face_crop=True, "
                "no_face='whole') on CPU, each model with its own face-crop settings",
        "face_crop": face_crops, "scores": scores}
    if earlier.get("scores") and earlier.get("face_crop") != face_crops:
        # The scores of the settings before, for the record.
        record["reference_scores"]["earlier"] = {key: value for key, value in earlier.items()
                                                 if key != "earlier"}
    record_path.write_text(json.dumps(record, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
