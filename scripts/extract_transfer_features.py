"""Extract, once, the features every transfer-protocol candidate is trained on, and cache them.

For every labelled image under DATA_ROOT (in a seeded random order, so that a run stopped early
leaves a uniform sample of every folder), the toolkit's own face crop (cached MTCNN detection,
the default FaceCropConfig, whole image when no face) is resized to 224 x 224 (bilinear) and fed
to both detectors' inputs:
- the CLIP ViT-B/16 tower (rebuilt in PyTorch from the INT8 ONNX export, float32): the class
  token after each of its 12 blocks, the post-LayerNorm class token and the projected embedding;
- the shipped default CNN: its logit.
Chunks are written as .npz files to OUT_DIR; an existing chunk is skipped, so the script resumes,
and a run stopped early leaves a uniform random sample of every folder.

Usage:
    python scripts/extract_transfer_features.py DATA_ROOT OUT_DIR --tower PATH [--chunk 64]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepfake_toolkit.images import load_image
from deepfake_toolkit.models import load_model
from deepfake_toolkit.models.clip import CLIP_MEAN, CLIP_STD, build_tower_from_file
from deepfake_toolkit.train import TrainConfig, detect_faces_cached, find_labelled_images
from deepfake_toolkit.faces import crop_window


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = TrainConfig()
    table = find_labelled_images(args.data)
    table = table.iloc[np.random.default_rng(args.seed).permutation(len(table))]
    table = table.reset_index(drop=True)
    table[["relative", "label", "source"]].to_csv(out / "order.csv", index_label="position")
    cache_file = Path(args.cache_file or Path(config.cache_dir).expanduser() /
                      "face_detections.json")
    shard, shards = (int(v) for v in args.shard.split("/"))
    tower = build_tower_from_file(args.tower)
    cnn = load_model("default", device="cpu")
    clip_mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    clip_std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    started, done = time.perf_counter(), 0
    starts = range(0, len(table), args.chunk)
    for start in reversed(starts) if args.reverse else starts:
        target = out / f"chunk_{start // args.chunk:04d}.npz"
        if target.exists() or (start // args.chunk) % shards != shard:
            continue
        part = table.iloc[start:start + args.chunk]
        # Detected chunk by chunk, in the same random order, so that an early stop still leaves
        # a uniform sample with both detections and features.
        faces = detect_faces_cached(part.path.tolist(), config.face, cache_file, workers=0,
                                    progress=False)
        pixels, has_face = [], []
        for path in part.path:
            image = load_image(path)
            found = faces.get(path) or []
            if found:
                image = image.crop(crop_window(found[0].box, image.size, config.face))
            has_face.append(bool(found))
            image = image.resize((224, 224), Image.Resampling.BILINEAR)
            pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
                          .permute(2, 0, 1))
        x = torch.stack(pixels)
        with torch.inference_mode():
            features = tower.forward_features((x - clip_mean) / clip_std)
            logit = cnn.module((x - 0.5) / 0.5).reshape(-1)
        partial = target.with_name(target.stem + ".partial.npz")
        np.savez(partial, relative=part.relative.to_numpy(), label=part.label.to_numpy(),
                 source=part.source.to_numpy(), has_face=np.array(has_face),
                 cls=features["cls"].numpy().astype(np.float16),
                 pooled=features["pooled"].numpy().astype(np.float32),
                 embeds=features["embeds"].numpy().astype(np.float32),
                 cnn_logit=logit.numpy().astype(np.float32))
        partial.rename(target)
        done += len(part)
        rate = (time.perf_counter() - started) / done
        print(f"{target.name}: {done} images in this run, {rate:.2f} s/image", flush=True)


if __name__ == "__main__":
    main()
