"""Speed of a model (--model; default: the default model) and where a face-crop run's time goes.

Prints images per second and peak memory, and ratios measured in the same run (the machine's
load moves absolute figures; the ratios are what to compare). Nothing is asserted.

1. The CNN (``cnn``, the default model's CNN branch) alone: inference and training steps,
   channels-last against the standard layout.
2. ``classify_files`` with face crop on --limit files spread over --images.
3. With --stages: on --stage-files face photos at 512 px and the same photos upscaled to
   1024 px, for each face detector setting (MTCNN searching down to its 12 px window, the
   default until 2026-12-03; MTCNN as configured by default, searching only for faces
   min_face_size keeps; the same on a copy at most 640 px; RetinaFace when installed):
   decoding only; decoding and face detection only (in the pipeline's worker processes, no
   model; on a CUDA device also MTCNN batched on the GPU); the whole pipeline; and a naive loop
   (open one image, detect, crop, score it alone, next). It prints images/s, the ratios whole
   pipeline / detection stage and whole pipeline / naive loop, the peak resident memory of the
   process and its workers together, and how the faces each other setting finds match
   the first setting's (IoU of the boxes).

Usage: python scripts/benchmark.py [--images DIR] [--limit N] [--device cpu|cuda] [--repeats N]
                                   [--stages] [--stage-files N] [--workers N] [--model NAME]

--images defaults to ../shared/data/faces-train; without it, only the model figures are
printed. Run it under the `deepfake-toolkit` command's allocator (LD_PRELOAD=libtcmalloc...) to
see what users get.
"""

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from deepfake_toolkit import FaceCropConfig, FaceCropper, classify_files
from deepfake_toolkit.faces import box_iou
from deepfake_toolkit.images import find_images, load_image
from deepfake_toolkit.models import PRECISIONS, load_model
from deepfake_toolkit.models.loading import PRECISION_ENV
from deepfake_toolkit.pipeline import default_workers

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared/data/faces-train"


def images_per_second(step, batch: int, repeats: int) -> float:
    step()  # warm-up: allocator, kernels, layout conversions
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return batch * repeats / (time.perf_counter() - started)


def model_figures(device: str, repeats: int) -> None:
    detector = load_model("cnn", device=device)
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


def pipeline_figures(folder: Path, limit: int, device: str, model: str) -> None:
    everything = [str(p) for p in find_images(folder)]
    files = everything[::max(1, len(everything) // limit)][:limit]  # spread over all folders
    if not files:
        print(f"no images under {folder}")
        return
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    frame = classify_files(files, model, device=device, progress=False)
    seconds = time.perf_counter() - started
    print(f"classify_files with face crop, model {model}: {len(files)} images in {seconds:.1f} s, "
          f"{len(files) / seconds:.1f} img/s (the pipeline's own figure, start-up excluded: "
          f"{frame.attrs['images_per_second']:.1f} img/s)")
    print(f"peak resident memory of this process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if device == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


class PeakMemory:
    """Samples the resident memory of a process (this one by default) and all its descendants,
    summed, every ``interval`` seconds; ``peak`` is the largest sum seen. ``peak_pss`` is the
    same for the proportional set size (shared pages split between the processes sharing them,
    so forked workers are not counted twice)."""

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.peak = 0
        self.peak_pss = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _proc_bytes(pid: int, name: str, field: str) -> int:
        """Bytes from the line "FIELD: N kB" of /proc/PID/NAME (0 once the process is gone)."""
        try:
            for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        found = []
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                text = (task / "children").read_text().split()
                found.extend(int(child) for child in text)
        except OSError:
            pass
        return found

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            pids, todo = [], [self.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(self._children(pid))
            rss = sum(self._proc_bytes(pid, "status", "VmRSS:") for pid in pids)
            pss = sum(self._proc_bytes(pid, "smaps_rollup", "Pss:") for pid in pids)
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


class _DetectOnly(Dataset):
    """The pipeline's worker stage without the models: decode, then find faces."""

    def __init__(self, files: list[str], cropper: FaceCropper) -> None:
        self.files, self.cropper = files, cropper

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> int:
        return len(self.cropper.detect([load_image(self.files[index])])[0])


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _rate(files: list[str], run) -> tuple[float, str]:
    with PeakMemory() as memory:
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    return len(files) / seconds, f"{memory.peak / 2**30:.2f} GiB ({memory.peak_pss / 2**30:.2f})"


STAGE_DETECTORS = {
    # MTCNN searching for faces down to its 12 px window: the default until 2026-12-03.
    "mtcnn-search12": FaceCropConfig(detector="mtcnn", mtcnn_search=12),
    # The default: MTCNN searching only for faces that min_face_size keeps.
    "mtcnn": FaceCropConfig(detector="mtcnn"),
    # The same on a copy at most 640 px.
    "mtcnn-640-scaled": FaceCropConfig(detector="mtcnn", detect_max_side=640,
                                       mtcnn_search="scaled"),
    "retinaface": FaceCropConfig(detector="retinaface"),
}
"""The face detectors and settings the stage figures compare; the first is the reference the
others' faces are matched against."""


def same_faces(reference: list, other: list) -> tuple[int, int, float, float]:
    """How ``other``'s faces (per image) match ``reference``'s: images where the number of faces
    differs, images where the first face of either has no match with IoU >= 0.5, and the mean
    and smallest IoU of each reference face with its best match."""
    count_differs = unmatched = 0
    ious = []
    for ref_faces, faces in zip(reference, other):
        count_differs += len(ref_faces) != len(faces)
        for face in ref_faces:
            best = max((box_iou(face.box, f.box) for f in faces), default=0.0)
            ious.append(best)
            unmatched += best < 0.5
    mean = sum(ious) / len(ious) if ious else float("nan")
    return count_differs, unmatched, mean, min(ious, default=float("nan"))


def _detect_on_gpu(files: list[str], cropper: FaceCropper, workers: int) -> None:
    """The CUDA path's detection stage: decoding in workers, MTCNN batched on the GPU."""
    loader = DataLoader(_DecodeOnly(files), batch_size=32, num_workers=workers,
                        collate_fn=list, worker_init_fn=_one_thread if workers else None)
    for images in loader:
        cropper.detect(images)
    torch.cuda.synchronize()


class _DecodeOnly(Dataset):
    def __init__(self, files: list[str]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Image.Image:
        return load_image(self.files[index])


def stage_figures(folder: Path, count: int, workers: int, device: str, model: str) -> None:
    photos = [str(p) for p in find_images(folder / "ffhq_tpdne_roeishc")][:count]
    if len(photos) < count:
        print(f"need {count} 512 px photos in {folder / 'ffhq_tpdne_roeishc'}; found {len(photos)}")
        return
    detector = load_model(model, device=device)
    names = list(STAGE_DETECTORS)
    try:
        import retinaface  # noqa: F401
    except ImportError:
        names.remove("retinaface")
        print("RetinaFace not installed (pip install 'deepfake-toolkit[retinaface]'): MTCNN only")
    print(f"{count} photos, device {device}; peak = resident memory of this process and its "
          "workers together (sum of RSS; PSS in brackets)")
    with tempfile.TemporaryDirectory() as scratch:
        big = []
        for index, path in enumerate(photos):
            big.append(os.path.join(scratch, f"{index:04d}.jpg"))
            with Image.open(path) as image:
                image.convert("RGB").resize((1024, 1024), Image.Resampling.LANCZOS).save(
                    big[-1], quality=90)
        for size, files in ((512, photos), (1024, big)):
            rate, memory = _rate(files, lambda: [load_image(f) for f in files])
            print(f"{size:4d} px  decode only (1 process)                {rate:7.1f} img/s   "
                  f"peak {memory}")
            whole_rates = {}
            for name in names:
                config = STAGE_DETECTORS[name]
                cpu_cropper = FaceCropper(config)
                loader_workers = default_workers(len(files), 32) if workers < 0 else workers

                def detect_only() -> None:
                    loader = DataLoader(_DetectOnly(files, cpu_cropper), batch_size=None,
                                        num_workers=loader_workers,
                                        worker_init_fn=_one_thread if loader_workers else None)
                    for _ in loader:
                        pass

                def whole() -> None:
                    classify_files(files, detector, face_config=config, progress=False,
                                   device=device, num_workers=None if workers < 0 else workers)

                @torch.inference_mode()
                def naive() -> None:
                    for path in files:
                        image = load_image(path)
                        faces = cpu_cropper.detect([image])[0]
                        region = cpu_cropper.crop(image, faces[0]) if faces else image
                        detector.predict(detector.transform(region).unsqueeze(0))

                label = f"{size:4d} px  {name:16s}"
                detect_rate, detect_memory = _rate(files, detect_only)
                whole_rate, whole_memory = _rate(files, whole)
                naive_rate, naive_memory = _rate(files, naive)
                whole_rates[name] = whole_rate
                print(f"{label} detection stage only {detect_rate:7.1f} img/s   "
                      f"peak {detect_memory} ({loader_workers} CPU workers)")
                if device == "cuda" and config.detector == "mtcnn":
                    gpu_cropper = FaceCropper(config, device="cuda")
                    gpu_rate, gpu_memory = _rate(
                        files, lambda: _detect_on_gpu(files, gpu_cropper, loader_workers))
                    print(f"{label} detection on the GPU  {gpu_rate:7.1f} img/s   "
                          f"peak {gpu_memory} (batches of 32)")
                print(f"{label} whole pipeline       {whole_rate:7.1f} img/s   "
                      f"peak {whole_memory}")
                print(f"{label} naive loop           {naive_rate:7.1f} img/s   "
                      f"peak {naive_memory}")
                print(f"{label} pipeline / detection stage {whole_rate / detect_rate:.2f}x, "
                      f"pipeline / naive loop {whole_rate / naive_rate:.2f}x")
            reference = [FaceCropper(STAGE_DETECTORS[names[0]]).detect([load_image(f)])[0]
                         for f in files]
            for name in names[1:]:
                cropper = FaceCropper(STAGE_DETECTORS[name])
                found = [cropper.detect([load_image(f)])[0] for f in files]
                differs, unmatched, mean_iou, min_iou = same_faces(reference, found)
                print(f"{size:4d} px  {name} against {names[0]}: {sum(map(len, reference))} faces, "
                      f"face count differs on {differs} images, {unmatched} faces unmatched "
                      f"(IoU < 0.5), IoU mean {mean_iou:.3f}, min {min_iou:.3f}; whole "
                      f"pipeline {whole_rates[name] / whole_rates[names[0]]:.2f}x {names[0]}'s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=SHARED_IMAGES)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage of a face-crop run at 512 and 1024 px")
    parser.add_argument("--stage-files", type=int, default=100)
    parser.add_argument("--workers", type=int, default=-1,
                        help="decoding workers for the stage figures (default: the pipeline's)")
    parser.add_argument("--skip-model", action="store_true", help="no CNN-only figures")
    parser.add_argument("--model", default="default",
                        help="the model of the pipeline and stage figures (default: default)")
    parser.add_argument("--precision", choices=PRECISIONS[1:] + PRECISIONS[:1],
                        help="what the CLIP tower computes in (default: float32, or "
                             f"${PRECISION_ENV}; see the README's 'Precision')")
    args = parser.parse_args()
    if args.precision:
        os.environ[PRECISION_ENV] = args.precision
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"precision {os.environ.get(PRECISION_ENV) or 'float32'}")
    if not args.skip_model:
        model_figures(args.device, args.repeats)
    if not args.images.is_dir():
        print(f"{args.images} is absent: no pipeline figures")
        return
    if args.stages:
        stage_figures(args.images, args.stage_files, args.workers, args.device, args.model)
    else:
        pipeline_figures(args.images, args.limit, args.device, args.model)


if __name__ == "__main__":
    main()
