"""Self-blended images from facial landmarks (Shiohara and Yamasaki, CVPR 2022).

A pseudo-fake is made from one real image only: a slightly altered copy of the image (brightness,
contrast, saturation, hue and RGB shift; blur, sharpening or down-and-up scaling; a small scale and
shift) is blended back into the original through a face-shaped mask built from the detector's five
landmarks, at the image's own resolution, and only then cut out as the face crop
(:func:`self_blended_crop`). What remains is what
face swaps leave - a blending boundary and a statistics mismatch inside the face - without any
identity change, so a detector trained on it cannot learn a generator's fingerprint instead.

This is the toolkit's one self-blend generator. The training augmenter's ``--self-blend`` option
uses it on face crops whose landmarks were not detected (:func:`self_blended_face`: landmarks of a
face centred in the crop); the CLIP probe's self-blends use the detected landmarks. Until this
session that option pasted through an ellipse centred on the crop, whatever the face's pose, so
its boundary rarely followed a face; here the mask is the convex hull of the landmarks extended
to brow, cheeks and chin, scaled and deformed at random, with soft or hard edges as the paper's
augmentations, and the image outside the mask is left bit for bit untouched.
"""

from __future__ import annotations

import random
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
"""MTCNN's five landmarks, in its order, as (x, y) image pixels."""


def detect_landmarks(image: Image.Image, mtcnn, box: Sequence[float] | None = None
                     ) -> np.ndarray | None:
    """The five landmarks of one face MTCNN finds in ``image``, (5, 2), or None.

    Args:
        image: RGB image.
        mtcnn: A facenet-pytorch ``MTCNN`` (e.g. ``FaceCropper(...).mtcnn``).
        box: The face wanted, (x1, y1, x2, y2) pixels (e.g. the cached detection a crop is cut
            around): the detection that overlaps it most is taken. None takes the largest face.
    """
    boxes, _, points = mtcnn.detect(np.asarray(image.convert("RGB")), landmarks=True)
    if boxes is None or points is None or not len(boxes):
        return None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 5, 2)
    if box is None:
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return points[int(np.argmax(areas))]
    overlap = _iou(boxes, np.asarray(box, dtype=np.float64))
    return points[int(np.argmax(overlap))] if overlap.max() > 0.3 else None


def _iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    low = np.maximum(boxes[:, :2], box[:2])
    high = np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(boxes) + area(box) - inter + 1e-9)


def face_outline(landmarks: np.ndarray) -> np.ndarray:
    """Points around the face implied by five landmarks: the landmarks themselves plus brow,
    temple, cheek and chin points placed by the eye distance and the eye-mouth distance, (13, 2).
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    eyes = (left_eye + right_eye) / 2
    mouth = (mouth_left + mouth_right) / 2
    across = right_eye - left_eye
    down = mouth - eyes
    extra = [
        left_eye - 0.35 * across - 0.55 * down, right_eye + 0.35 * across - 0.55 * down,
        eyes - 0.75 * down,                                            # brow / forehead
        left_eye - 0.45 * across + 0.3 * down, right_eye + 0.45 * across + 0.3 * down,  # temples
        mouth_left - 0.35 * across + 0.2 * down, mouth_right + 0.35 * across + 0.2 * down,
        mouth + 0.55 * down,                                           # chin
    ]
    return np.concatenate([points, np.asarray(extra)])


def landmark_mask(landmarks: np.ndarray, size: tuple[int, int], rng: random.Random,
                  scale: tuple[float, float] = (0.8, 1.05), hard_prob: float = 0.25,
                  blur: tuple[float, float] = (0.02, 0.08)) -> np.ndarray:
    """A face-shaped blending mask in [0, 1], shape (height, width).

    The convex hull of :func:`face_outline`, scaled about its centre by a factor from ``scale``
    and with each vertex moved by up to 5% of the face size (so boundaries vary), filled, then
    either kept hard (``hard_prob``) or softened by a Gaussian blur whose sigma is drawn from
    ``blur`` (fractions of the face size); soft masks are eroded first so that the blur stays
    inside the hull.
    """
    from scipy.ndimage import distance_transform_cdt
    from scipy.spatial import ConvexHull

    outline = face_outline(landmarks)
    hull = outline[ConvexHull(outline).vertices]
    centre = hull.mean(axis=0)
    face_size = float(np.ptp(hull, axis=0).max())
    factor = rng.uniform(*scale)
    jitter = np.array([[rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)] for _ in hull])
    hull = centre + (hull - centre) * factor + jitter * face_size
    width, height = size
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in hull], fill=255)
    if rng.random() < hard_prob:
        return np.asarray(canvas, dtype=np.float32) / 255.0
    sigma = rng.uniform(*blur) * face_size
    # A square erosion of (size - 1) / 2 pixels (what ImageFilter.MinFilter(size) gives, pixel
    # for pixel, but in linear time: MinFilter costs seconds at these sizes).
    inside = np.asarray(canvas) > 0
    keep = distance_transform_cdt(inside, metric="chessboard") > (_odd(2 * sigma) - 1) // 2
    eroded = Image.fromarray((keep * 255).astype(np.uint8))
    soft = eroded.filter(ImageFilter.GaussianBlur(sigma))
    mask = np.asarray(soft, dtype=np.float32) / 255.0
    # The blur's tails never leave the hull: outside it the image stays untouched.
    return mask * (np.asarray(canvas) > 0)


def _odd(value: float) -> int:
    size = max(3, int(round(value)))
    return size if size % 2 else size + 1


def _altered_copy(image: Image.Image, rng: random.Random) -> Image.Image:
    """The source face: colour (brightness, contrast, saturation, hue, RGB shift), frequency
    (blur, sharpening or down-and-up scaling, as the paper's RandomDownScale / Sharpen) and a small
    scale and shift."""
    source = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
    source = ImageEnhance.Contrast(source).enhance(rng.uniform(0.85, 1.15))
    source = ImageEnhance.Color(source).enhance(rng.uniform(0.8, 1.2))
    hsv = np.asarray(source.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + rng.randint(-8, 8)) % 256
    source = Image.fromarray(hsv, "HSV").convert("RGB")
    shift = np.array([rng.uniform(-12, 12) for _ in range(3)], dtype=np.float32)
    source = Image.fromarray(np.clip(np.asarray(source, np.float32) + shift, 0, 255)
                             .astype(np.uint8))
    width, height = image.size
    frequency = rng.random()
    if frequency < 1 / 3:
        source = source.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    elif frequency < 2 / 3:
        source = source.filter(ImageFilter.UnsharpMask(radius=2, percent=rng.randint(50, 150)))
    else:
        factor = rng.choice([2, 4])
        source = source.resize((max(1, width // factor), max(1, height // factor)),
                               Image.Resampling.BILINEAR).resize((width, height),
                                                                 Image.Resampling.BILINEAR)
    factor = rng.uniform(0.95, 1.05)
    resized = source.resize((max(1, round(width * factor)), max(1, round(height * factor))),
                            Image.Resampling.BILINEAR)
    shifted = image.copy()
    dx = round((width - resized.width) / 2 + rng.uniform(-0.03, 0.03) * width)
    dy = round((height - resized.height) / 2 + rng.uniform(-0.03, 0.03) * height)
    shifted.paste(resized, (dx, dy))
    return shifted


def self_blended_image(image: Image.Image, landmarks: np.ndarray, rng: random.Random
                       ) -> tuple[Image.Image, np.ndarray]:
    """A self-blended pseudo-fake of ``image`` and the mask it was blended through.

    Args:
        image: The real RGB image (full resolution; crop afterwards).
        landmarks: Its face's five landmarks, (5, 2) pixels (see :func:`detect_landmarks`).
        rng: Random source (colour, sharpness, geometry, mask shape, edge, blend strength).

    Returns:
        The blended image and the mask (height, width) in [0, 1]; where the mask is 0 the image
        equals ``image`` exactly.
    """
    image = image.convert("RGB")
    mask = landmark_mask(landmarks, image.size, rng)
    mask = mask * rng.choice([1.0, 1.0, 1.0, 0.75, 0.5])
    original = np.asarray(image, dtype=np.float32)
    source = np.asarray(_altered_copy(image, rng), dtype=np.float32)
    blended = original + mask[..., None] * (source - original)
    result = np.where(mask[..., None] > 0, np.clip(np.rint(blended), 0, 255), original)
    return Image.fromarray(result.astype(np.uint8)), mask


CROP_LANDMARKS = np.array([[0.36, 0.42], [0.64, 0.42], [0.50, 0.57], [0.39, 0.72], [0.61, 0.72]],
                          dtype=np.float32)
"""Where the five landmarks of an upright face sit in the toolkit's square face crop (margin
0.1), as fractions of its width and height: for crops whose landmarks were not detected."""


def self_blended_face(face: Image.Image, rng: random.Random) -> Image.Image:
    """A self-blended pseudo-fake of a face crop without detected landmarks (the training
    augmenter's ``self_blend_prob``): :func:`self_blended_image` with the landmarks of a face
    centred in the crop (:data:`CROP_LANDMARKS`), each moved by up to 3% of the crop."""
    width, height = face.size
    jitter = np.array([[rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)] for _ in range(5)],
                      dtype=np.float32)
    landmarks = (CROP_LANDMARKS + jitter) * np.array([width, height], dtype=np.float32)
    return self_blended_image(face, landmarks, rng)[0]


def self_blended_crop(image: Image.Image, box: Sequence[float], landmarks: np.ndarray,
                      face_config, rng: random.Random) -> tuple[Image.Image, float]:
    """A self-blend made at the image's full resolution, then cut out as the toolkit's face crop.

    The blending happens before any resizing, so its seam and resampling traces are those of a
    real manipulation at the photo's own scale; the crop is the one inference cuts
    (:func:`deepfake_toolkit.faces.crop_window` around ``box`` with ``face_config``).

    Args:
        image: The real RGB image.
        box: The face's detection box (x1, y1, x2, y2), as cached for the crop.
        landmarks: The same face's five landmarks (see :func:`detect_landmarks`).
        face_config: :class:`deepfake_toolkit.faces.FaceCropConfig` of the crop.
        rng: Random source.

    Returns:
        The cropped pseudo-fake and the share of the crop the mask covers (mask > 0).
    """
    from .faces import crop_window

    blended, mask = self_blended_image(image, landmarks, rng)
    window = crop_window(box, image.size, face_config)
    x1, y1, x2, y2 = (int(round(v)) for v in window)
    inside = mask[max(0, y1):max(0, y2), max(0, x1):max(0, x2)]
    share = float((inside > 0).sum()) / max(1, (x2 - x1) * (y2 - y1))
    return blended.crop(window), share
