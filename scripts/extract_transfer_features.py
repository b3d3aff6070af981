"""Extract, once, the features every transfer-protocol candidate is trained on, and cache them.

For every labelled image under DATA_ROOT (in a seeded random order, so that a run stopped early
leaves a uniform sample of every folder), the toolkit's own face crop (cached MTCNN detection,
the default FaceCropConfig, whole image when no face; ``--face-detector retinaface`` cuts it around
RetinaFace's box on MTCNN's frame instead) is resized to 224 x 224 (bilinear) and fed
to both detectors' inputs:
- the CLIP ViT-B/16 tower (rebuilt in PyTorch from the INT8 ONNX export, float32): the class
  token after each of its 12 blocks, the post-LayerNorm class token and the projected embedding;
- the shipped CNN (``cnn``): its logit.
Chunks are written as .npz files to OUT_DIR; an existing chunk is skipped, so the script resumes,
and a run stopped early leaves a uniform random sample of every folder.

With ``--self-blends N`` the same features are extracted instead from N self-blended pseudo-fakes
(``deepfake_toolkit.self_blend``, Shiohara and Yamasaki 2022) of every real image of the TRAINING
split (the grouped split of ``deepfake-toolkit train``: pass the same ``--groups``); validation
images are never blended. Each blend is made at the photo's full resolution through a mask from
MTCNN's five landmarks of the cached face (landmarks cached in OUT_DIR/landmarks.json), then cut
out as the same face crop; its random draws are seeded by (seed, file, blend index), so a blend
does not depend on the order or the chunking. Rows record the parent file and its folder, so a
leave-one-folder-out fold can drop the self-blends of the folder it holds out.

With ``--last-block-tokens`` the chunks hold instead the tokens that enter the tower's last block
(N x 197 x 768, float16; the blocks before it run under bfloat16 autocast, about 0.1 s per image on
2 cores), for ``scripts/tune_last_block.py``; the same images in the same order as without it.

Usage:
    python scripts/extract_transfer_features.py DATA_ROOT OUT_DIR --tower PATH [--chunk 64]
    python scripts/extract_transfer_features.py DATA_ROOT SB_DIR --tower PATH --self-blends 1 \
        --groups GROUPS.csv
"""

import argparse
import dataclasses
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake_toolkit.images import load_image
from deepfake_toolkit.models import load_model
from deepfake_toolkit.models.clip import CLIP_MEAN, CLIP_STD, build_tower_from_file
from deepfake_toolkit.faces import FACE_DETECTORS, FaceCropper, crop_window
from deepfake_toolkit.self_blend import detect_landmarks, self_blended_crop
from deepfake_toolkit.train import TrainConfig, detect_faces_cached, find_labelled_images, \
    read_groups, split_by_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--tower", required=True)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="process only chunks whose index is I modulo N (run N processes)")
    parser.add_argument("--reverse", action="store_true",
                        help="walk the chunks from the last (a further process that does not "
                             "meet the others until the end)")
    parser.add_argument("--cache-file", help="face-detection cache (default: the toolkit's "
                        "~/.cache/deepfake_toolkit/face_detections.json; give each shard its own)")
    parser.add_argument("--self-blends", type=int, default=0, metavar="N",
                        help="extract N self-blends of every training-split real image instead")
    parser.add_argument("--groups", help="groups CSV of the split (as deepfake-toolkit train)")
    parser.add_argument("--last-block-tokens", action="store_true",
                        help="store the tokens entering the last block instead of the features")
    parser.add_argument("--face-detector", choices=FACE_DETECTORS, default="mtcnn",
                        help="the detector whose boxes the crops are cut around (RetinaFace's "
                             "on MTCNN's frame, faces.RETINAFACE_TO_MTCNN); self-blend masks "
                             "always come from MTCNN's landmarks inside that box")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig()
    face = dataclasses.replace(config.face, detector=args.face_detector)
    table = find_labelled_images(args.data, read_groups(args.groups) if args.groups else None)
    if args.self_blends:
        # Training-split reals only: the split is drawn on the full table, as training draws it.
        table = table[~split_by_source(table, config.val_fraction, config.seed)
                      & (table.label == 0).to_numpy()]
    table = table.iloc[np.random.default_rng(args.seed).permutation(len(table))]
    table = table.reset_index(drop=True)
    table[["relative", "label", "source"]].to_csv(out / "order.csv", index_label="position")
    cache_file = Path(args.cache_file or Path(config.cache_dir).expanduser() /
                      "face_detections.json")
    shard, shards = (int(v) for v in args.shard.split("/"))
    tower = build_tower_from_file(args.tower)
    cnn = None if args.last_block_tokens else load_model("cnn", device="cpu")
    started, done = time.perf_counter(), 0
    starts = range(0, len(table), args.chunk)
    landmark_file = out / "landmarks.json"
    landmarks = json.loads(landmark_file.read_text()) if landmark_file.is_file() else {}
    mtcnn = FaceCropper(config.face).mtcnn if args.self_blends else None
    for start in reversed(starts) if args.reverse else starts:
        target = out / f"chunk_{start // args.chunk:04d}.npz"
        if target.exists() or (start // args.chunk) % shards != shard:
            continue
        part = table.iloc[start:start + args.chunk]
        # Detected chunk by chunk, in the same random order, so that an early stop still leaves
        # a uniform sample with both detections and features.
        faces = detect_faces_cached(part.path.tolist(), face, cache_file, workers=0,
                                    progress=False)
        crops, rows = [], []
        for row in part.itertuples():
            image = load_image(row.path)
            found = faces.get(row.path) or []
            if not args.self_blends:
                crops.append(image.crop(crop_window(found[0].box, image.size, face))
                             if found else image)
                rows.append((row.relative, row.label, row.source, bool(found), -1, 0.0))
                continue
            if not found:
                continue    # no face, no landmarks: nothing to blend
            if row.relative not in landmarks:
                points = detect_landmarks(image, mtcnn, found[0].box)
                landmarks[row.relative] = None if points is None else points.tolist()
            if landmarks[row.relative] is None:
                continue
            for k in range(args.self_blends):
                rng = random.Random(f"{args.seed}/{row.relative}/{k}")
                crop, share = self_blended_crop(image, found[0].box,
                                                np.array(landmarks[row.relative]), face,
                                                rng)
                crops.append(crop)
                rows.append((row.relative, 1, row.source, True, k, share))
        if not crops:
            print(f"{target.name}: no face to blend in this chunk", flush=True)
            continue
        relative, label, source, has_face, blend, share = (np.array(v) for v in zip(*rows))
        if args.last_block_tokens:
            arrays = {"tokens": last_block_tokens(crops, tower).numpy().astype(np.float16)}
        else:
            features, logit = crop_features(crops, tower, cnn)
            arrays = {"cls": features["cls"].numpy().astype(np.float16),
                      "pooled": features["pooled"].numpy().astype(np.float32),
                      "embeds": features["embeds"].numpy().astype(np.float32),
                      "cnn_logit": logit.numpy().astype(np.float32)}
        partial = target.with_name(target.stem + ".partial.npz")
        np.savez(partial, relative=relative, label=label, source=source, has_face=has_face,
                 **arrays, **({"blend": blend, "mask_share": share.astype(np.float32)}
                              if args.self_blends else {}))
        partial.rename(target)
        if args.self_blends:
            landmark_file.write_text(json.dumps(landmarks))
        done += len(part)
        rate = (time.perf_counter() - started) / done
        print(f"{target.name}: {done} images in this run, {rate:.2f} s/image", flush=True)


def crop_features(crops: list, tower, cnn) -> tuple[dict, torch.Tensor]:
    """Both detectors' inputs from face crops: resized to 224 x 224 (bilinear), then the CLIP
    tower's features and the CNN's logit."""
    x = torch.stack([_pixels(crop) for crop in crops])
    with torch.inference_mode():
        features = tower.forward_features((x - CLIP_MEAN_T) / CLIP_STD_T)
        logit = cnn.module((x - 0.5) / 0.5).reshape(-1)
    return features, logit


def last_block_tokens(crops: list, tower, per_pass: int = 4,
                      dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """The tokens entering the tower's last block, (N, 197, 768) float32, the blocks before it
    under ``dtype`` autocast (``scripts/tune_last_block.py`` trains on them)."""
    x = (torch.stack([_pixels(crop) for crop in crops]) - CLIP_MEAN_T) / CLIP_STD_T
    out = []
    with (torch.inference_mode(),
          torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)):
        for part in x.split(per_pass):
            h = tower.input_tokens(part)
            for block in tower.layers[:-1]:
                h = block(h)
            out.append(h.float())
    return torch.cat(out)


def _pixels(crop) -> torch.Tensor:
    return torch.from_numpy(np.asarray(crop.resize((224, 224), Image.Resampling.BILINEAR),
                                       dtype=np.float32) / 255.0).permute(2, 0, 1)


CLIP_MEAN_T = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
CLIP_STD_T = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


if __name__ == "__main__":
    main()
