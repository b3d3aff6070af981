"""The local engine against Ray on the same files, in the same process, alternating.

Classifies FOLDER (or the sample folder, copied --copies times) with ``engine="local"`` and
``engine="ray"`` (a local Ray cluster started by the call, as a user without a cluster gets),
--rounds times each, alternating so that the machine's other load falls on both. Prints, per run:
images/s while scoring, the scoring seconds, the seconds Ray took to start (the cluster and its
session) and the whole call; then the median of each engine and the ratio Ray / local. Nothing is
asserted: on a shared machine the ratios, measured in the same run, are what to read.

Usage: python scripts/engines.py [FOLDER] [--copies 4] [--rounds 2] [--model default]
           [--no-face-crop]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def sample_folder(copies: int, scratch: Path) -> Path:
    """``copies`` copies of the toolkit's sample images, each under its own sub-folder."""
    from deepfake_toolkit.samples import write_samples

    folder = scratch / "samples"
    first = folder / "copy_0"
    write_samples(first)
    for index in range(1, copies):
        shutil.copytree(first, folder / f"copy_{index}")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        help="images to classify (default: the sample folder, --copies times)")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="default")
    parser.add_argument("--no-face-crop", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from deepfake_toolkit import classify_files, find_images
    from deepfake_toolkit.pipeline import load_detectors

    with tempfile.TemporaryDirectory(prefix="engines_") as scratch:
        folder = args.folder or sample_folder(args.copies, Path(scratch))
        files = find_images(folder)
        detectors = load_detectors(args.model)  # loaded once: the runs time scoring, not loading
        face_crop = False if args.no_face_crop else None
        print(f"{len(files)} images from {folder}, model {args.model}, "
              f"face crop {'off' if args.no_face_crop else 'as the model says'}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'engine':<7} {'img/s':>7} {'scoring':>9} {'Ray start':>10} {'whole call':>11}")
        runs: dict[str, list[tuple[float, float, float, float]]] = {"local": [], "ray": []}
        for _ in range(args.rounds):
            for engine in runs:
                started = time.perf_counter()
                frame = classify_files(files, detectors, face_crop, engine=engine,
                                       progress=False)
                whole = time.perf_counter() - started
                start = frame.attrs.get("ray_start_seconds", 0.0)
                run = (frame.attrs["images_per_second"], frame.attrs["seconds"], start, whole)
                runs[engine].append(run)
                print(f"{engine:<7} {run[0]:7.2f} {run[1]:8.1f}s {run[2]:9.1f}s {run[3]:10.1f}s",
                      flush=True)
        medians = {engine: [statistics.median(column) for column in zip(*values)]
                   for engine, values in runs.items()}
        local, ray = medians["local"], medians["ray"]
        print(f"medians: local {local[0]:.2f} img/s, whole call {local[3]:.1f} s; "
              f"ray {ray[0]:.2f} img/s, whole call {ray[3]:.1f} s (start {ray[2]:.1f} s)")
        print(f"ray / local: scoring rate {ray[0] / local[0]:.2f}x, "
              f"whole call {ray[3] / local[3]:.2f}x as long")


if __name__ == "__main__":
    sys.exit(main())
