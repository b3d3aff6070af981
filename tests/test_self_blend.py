"""Self-blended pseudo-fakes from landmarks: the mask lies on the face, the rest is untouched."""

import random

import numpy as np
import pytest
from PIL import Image

from deepfake_toolkit.self_blend import detect_landmarks, face_outline, landmark_mask, \
    self_blended_image

pytest.importorskip("scipy", reason="scipy (a scikit-learn dependency) not installed")

# A frontal face in a 300 x 300 image: eyes, nose tip, mouth corners.
LANDMARKS = np.array([[120, 130], [180, 130], [150, 165], [127, 195], [173, 195]], float)


def test_masks_cover_the_face_and_stay_inside_its_outline():
    outline = face_outline(LANDMARKS)
    low, high = outline.min(axis=0), outline.max(axis=0)
    margin = 0.12 * (high - low).max()
    for seed in range(20):
        mask = landmark_mask(LANDMARKS, (300, 300), random.Random(seed))
        assert mask.shape == (300, 300) and 0 <= mask.min() and mask.max() <= 1
        ys, xs = np.nonzero(mask)
        assert xs.min() >= low[0] - margin and xs.max() <= high[0] + margin
        assert ys.min() >= low[1] - margin and ys.max() <= high[1] + margin
        for x, y in LANDMARKS[2:3].astype(int):   # the nose is always inside the blend
            assert mask[y, x] > 0
        # Corners of the image are never touched.
        assert mask[:20, :20].max() == 0 and mask[-20:, -20:].max() == 0


def test_both_hard_and_soft_edges_occur():
    kinds = set()
    for seed in range(30):
        mask = landmark_mask(LANDMARKS, (300, 300), random.Random(seed))
        inner = mask[(mask > 0)]
        kinds.add("hard" if np.all(inner == 1.0) else "soft")
    assert kinds == {"hard", "soft"}


def test_blend_changes_the_face_and_leaves_the_rest_untouched(astronaut):
    image = astronaut.resize((300, 300))
    for seed in range(5):
        blended, mask = self_blended_image(image, LANDMARKS, random.Random(seed))
        before, after = np.asarray(image), np.asarray(blended)
        outside = mask == 0
        assert np.array_equal(before[outside], after[outside])
        assert np.abs(after[mask > 0.5].astype(int) - before[mask > 0.5]).mean() > 1.0


def test_landmarks_from_mtcnn_lie_in_the_detected_face(astronaut):
    from deepfake_toolkit.faces import FaceCropper

    cropper = FaceCropper(device="cpu")
    face = cropper.detect([astronaut])[0][0]
    points = detect_landmarks(astronaut, cropper.mtcnn)
    x1, y1, x2, y2 = face.box
    assert points.shape == (5, 2)
    assert ((points[:, 0] > x1) & (points[:, 0] < x2) & (points[:, 1] > y1)
            & (points[:, 1] < y2)).all()
    assert points[0, 0] < points[1, 0] and points[2, 1] < points[3, 1]  # eyes L-R, nose above mouth
    mask = landmark_mask(points, astronaut.size, random.Random(0))
    assert mask[int(points[2, 1]), int(points[2, 0])] > 0
