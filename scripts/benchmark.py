"""Speed of the default model: inference and training steps, and `classify_files` end to end.

Prints images per second and peak memory, and the channels-last against standard-layout ratios
measured in the same run (the machine's load moves absolute figures; the ratios are what to
compare). Nothing is asserted.

Usage: python scripts/benchmark.py [--images DIR] [--limit N] [--device cpu|cuda] [--repeats N]

--images defaults to ../shared/data/faces-train (--limit files spread evenly over it); without
it, only the model figures are printed. Run it under the `deepfake-toolkit` command's allocator
(LD_PRELOAD=libtcmalloc...) to see what users get.
"""

import argparse
import resource
import time
from pathlib import Path

import torch

from deepfake_toolkit import classify_files
from deepfake_toolkit.images import find_images
from deepfake_toolkit.models import load_model

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared/data/faces-train"


def images_per_second(step, batch: int, repeats: int) -> float:
    step()  # warm-up: allocator, kernels, layout conversions
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return batch * repeats / (time.perf_counter() - started)


def model_figures(device: str, repeats: int) -> None:
    detector = load_model("default", device=device)
    module = detector.module
    batch = torch.rand(32, 3, 224, 224, device=detector.device) * 2 - 1
    rates = {}
    for layout in (torch.contiguous_format, torch.channels_last):
        module.to(memory_format=layout)
        x = batch.contiguous(memory_format=layout)

        @torch.inference_mode()
        def infer(x=x):
            module.eval()(x)
            if detector.device.type == "cuda":
                torch.cuda.synchronize()

        def train_step(x=x):
            module.train()
            loss = module(x).float().mean()
            module.zero_grad(set_to_none=True)
            loss.backward()
            if detector.device.type == "cuda":
                torch.cuda.synchronize()

        name = "channels-last" if layout is torch.channels_last else "standard"
        rates[name] = (images_per_second(infer, 32, repeats),
                       images_per_second(train_step, 32, max(1, repeats // 2)))
        print(f"{name:14s} inference {rates[name][0]:7.1f} img/s   training step "
              f"{rates[name][1]:6.1f} img/s   (batch 32, 224 px, {detector.device})")
    print(f"channels-last / standard: inference {rates['channels-last'][0] / rates['standard'][0]:.2f}x, "
          f"training {rates['channels-last'][1] / rates['standard'][1]:.2f}x")


def pipeline_figures(folder: Path, limit: int, device: str) -> None:
    everything = [str(p) for p in find_images(folder)]
    files = everything[::max(1, len(everything) // limit)][:limit]  # spread over all folders
    if not files:
        print(f"no images under {folder}")
        return
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    frame = classify_files(files, "default", device=device, progress=False)
    seconds = time.perf_counter() - started
    print(f"classify_files with face crop: {len(files)} images in {seconds:.1f} s, "
          f"{len(files) / seconds:.1f} img/s (the pipeline's own figure, start-up excluded: "
          f"{frame.attrs['images_per_second']:.1f} img/s)")
    print(f"peak resident memory of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if device == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    model_figures(args.device, args.repeats)
    if args.images.is_dir():
        pipeline_figures(args.images, args.limit, args.device)
    else:
        print(f"{args.images} is absent: no pipeline figures")


if __name__ == "__main__":
    main()
