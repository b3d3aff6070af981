"""Total memory of a classify run against the number of files: is it flat?

Builds folders of 1,000, 10,000 and 100,000 files (hard links to a pool of --pool photos, 1,000
per sub-folder) under --scratch, classifies each in a fresh process (``classify_directory``
with an output CSV, as ``deepfake-toolkit classify`` does) and samples, every
0.1 s, the resident memory of that process and all its workers together. It prints, per size:
seconds, images/s, the peak of the summed RSS (what the issue's target counts; pages shared by
the forked workers count once per process), the peak of the summed PSS (shared pages split
between the processes), and the size of the table returned to Python. Nothing is asserted.

By default face crop is off: with it, scoring runs at about 3-12 images/s on a 2-core machine,
too slow for 100,000 files; and the model is the CNN (``cnn``). --model NAME --face-crop measure
another model with its own face-crop settings (the `default` model: --sizes 1000 takes about 5
minutes on 2 cores). --input-size
scores with it at a smaller input (the same weights; its scores are not the CNN's) when even
that is too slow: the pipeline, the rows and the output are the same, only the network's work per
image shrinks.

--thumbnail N links to copies of the photos at most N px, so that decoding costs little too.

Usage: python scripts/memory_scaling.py [--sizes 1000 10000 100000] [--pool 300]
           [--source DIR] [--scratch /tmp/memory_scaling] [--input-size N] [--thumbnail N]
           [--workers N] [--model NAME] [--face-crop]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import PeakMemory  # noqa: E402

SHARED_PHOTOS = (Path(__file__).resolve().parents[1].parent
                 / "shared/data/faces-train/ffhq_tpdne_roeishc")


def pool_of_photos(source: Path, pool: int, scratch: Path, thumbnail: int | None) -> list[Path]:
    """The first ``pool`` photos of ``source``, or copies of them at most ``thumbnail`` px."""
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".png"))[:pool]
    if not photos:
        raise SystemExit(f"no photos under {source}")
    if not thumbnail:
        return photos
    from PIL import Image

    folder = scratch / f"pool_{thumbnail}"
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for photo in photos:
        copies.append(folder / f"{photo.stem}.jpg")
        if not copies[-1].exists():
            with Image.open(photo) as image:
                image.thumbnail((thumbnail, thumbnail))
                image.convert("RGB").save(copies[-1], quality=90)
    return copies


def build_tree(photos: list[Path], scratch: Path, size: int) -> Path:
    """``scratch/files_SIZE_NAME``: ``size`` hard links to ``photos``, 1,000 per sub-folder
    (made once, reused)."""
    tree = scratch / f"files_{size}_{photos[0].parent.name}"
    done = tree / ".complete"
    if done.exists():
        return tree
    for index in range(size):
        folder = tree / f"d{index // 1000:03d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{index:06d}{photos[index % len(photos)].suffix}"
        if not target.exists():
            os.link(photos[index % len(photos)], target)
    done.touch()
    return tree


def child(tree: Path, output: Path, input_size: int | None, workers: int | None,
          model: str, face_crop: bool) -> None:
    """The measured process: classify ``tree`` and print one JSON line about the table."""
    from deepfake_toolkit import classify_directory, load_model
    from deepfake_toolkit.models import get_spec, register_model

    if input_size:
        base = get_spec("cnn")
        register_model(dataclasses.replace(
            base, name=f"cnn_at_{input_size}",
            preprocess=dataclasses.replace(base.preprocess, input_size=input_size)))
        detector = load_model("cnn", device="cpu")
        detector = dataclasses.replace(detector, spec=get_spec(f"cnn_at_{input_size}"))
        model = detector
    started = time.perf_counter()
    frame = classify_directory(tree, model, face_crop=None if face_crop else False,
                               output_csv=output, progress=False, num_workers=workers,
                               device="cpu")
    print(json.dumps({"rows": len(frame), "seconds": time.perf_counter() - started,
                      "images_per_second": frame.attrs["images_per_second"],
                      "table_bytes": int(frame.memory_usage(deep=True).sum()),
                      "table_bytes_shallow": int(frame.memory_usage(deep=False).sum())}))


def measure(tree: Path, output: Path, input_size: int | None, workers: int | None,
            model: str, face_crop: bool) -> dict:
    command = [sys.executable, __file__, "--child", str(tree), "--output", str(output),
               "--model", model] + (["--face-crop"] if face_crop else [])
    if input_size:
        command += ["--input-size", str(input_size)]
    if workers is not None:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with PeakMemory(process.pid, interval=0.1) as memory:
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"the run on {tree} failed ({process.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result.update(peak_rss=memory.peak, peak_pss=memory.peak_pss)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--pool", type=int, default=300)
    parser.add_argument("--source", type=Path, default=SHARED_PHOTOS)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/memory_scaling"))
    parser.add_argument("--input-size", type=int, help="score with the CNN at "
                        "this input size (default: the model's own, 224)")
    parser.add_argument("--workers", type=int, help="decoding workers (default: the pipeline's)")
    parser.add_argument("--thumbnail", type=int, help="link to copies of the photos at most "
                        "this many pixels (decoding then costs little)")
    parser.add_argument("--model", default="cnn", help="registered model (default: cnn)")
    parser.add_argument("--face-crop", action="store_true",
                        help="crop faces with the model's own settings (default: off)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.output, args.input_size, args.workers, args.model,
              args.face_crop)
        return
    if args.input_size and args.model != "cnn":
        parser.error("--input-size is for the CNN (--model cnn) only")
    photos = pool_of_photos(args.source, args.pool, args.scratch, args.thumbnail)
    print(f"face crop {'on' if args.face_crop else 'off'}; model: {args.model}"
          + (f" at {args.input_size} px" if args.input_size else "") + "; "
          f"{os.cpu_count()} CPUs; {len(photos)} photos from {args.source}"
          + (f" as copies of at most {args.thumbnail} px" if args.thumbnail else ""))
    print(f"{'files':>8} {'seconds':>8} {'img/s':>7} {'peak RSS':>10} {'peak PSS':>10} "
          f"{'table':>9} {'table/row':>9}")
    for size in args.sizes:
        tree = build_tree(photos, args.scratch, size)
        result = measure(tree, args.scratch / f"scores_{size}.csv", args.input_size,
                         args.workers, args.model, args.face_crop)
        print(f"{size:8d} {result['seconds']:8.0f} {result['images_per_second']:7.1f} "
              f"{result['peak_rss'] / 2**20:7.0f} MiB {result['peak_pss'] / 2**20:7.0f} MiB "
              f"{result['table_bytes'] / 2**20:6.1f} MiB {result['table_bytes'] / size:7.0f} B",
              flush=True)


if __name__ == "__main__":
    main()
