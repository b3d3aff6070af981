"""Provenance columns: C2PA manifests signed here with the C2PA test key, and metadata written by
Pillow the way cameras, editors and image generators write it; every column is checked against
what was written."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from deepfake_toolkit.provenance import (
    PROVENANCE_COLUMNS, decode_user_comment, read_provenance)

c2pa = pytest.importorskip("c2pa", reason="c2pa-python (the provenance extra) is not installed")

FIXTURES = Path(__file__).parent / "fixtures" / "c2pa"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SD_PARAMETERS = ("a portrait of an astronaut, studio light\n"
                 "Negative prompt: blurry\n"
                 "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, "
                 "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
                 "Version: v1.6.0")


def _pixels(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8))


def _jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def _sign(jpeg: bytes, source_type: str = "trainedAlgorithmicMedia",
          remote_url: str | None = None) -> bytes:
    """Sign ``jpeg`` with the C2PA test certificate (no timestamp authority: offline)."""
    manifest = {
        "claim_generator_info": [{"name": "toolkit-test", "version": "2.5"}],
        "title": "made.jpg",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": IPTC + source_type},
            {"action": "c2pa.resized"}]}}],
    }
    info = c2pa.C2paSignerInfo(b"es256", (FIXTURES / "es256_certs.pem").read_bytes(),
                               (FIXTURES / "es256_private.key").read_bytes(), None)
    context = c2pa.Context.from_dict({"verify": {"remote_manifest_fetch": False,
                                                 "ocsp_fetch": False}})
    builder = c2pa.Builder(manifest, context=context)
    if remote_url:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    signed = io.BytesIO()
    builder.sign(c2pa.Signer.from_info(info), "image/jpeg", io.BytesIO(jpeg), signed)
    return signed.getvalue()


def _certificate_subject() -> tuple[str, str]:
    """Common name and organisation of the signing certificate, read with cryptography."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    leaf = x509.load_pem_x509_certificates((FIXTURES / "es256_certs.pem").read_bytes())[0]
    name = leaf.subject
    return (name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)


def _edit_scan_data(jpeg: bytes) -> bytes:
    """Change some entropy-coded bytes near the end (the file still decodes, pixels differ)."""
    data = bytearray(jpeg)
    end = data.rindex(b"\xff\xd9")
    for offset in range(end - 40, end - 20):
        if data[offset] not in (0xFF, 0x00) and data[offset - 1] != 0xFF:
            data[offset] ^= 0x01
    return bytes(data)


@pytest.fixture(scope="module")
def signed_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c2pa")
    plain = _jpeg_bytes(_pixels())
    files = {
        "signed": _sign(plain),
        "camera_signed": _sign(_jpeg_bytes(_pixels(1)), source_type="digitalCapture"),
        "plain": plain,
        "remote": _sign(_jpeg_bytes(_pixels(2)), remote_url="https://example.org/m.c2pa"),
    }
    files["edited"] = _edit_scan_data(files["signed"])
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f"{name}.jpg"
        paths[name].write_bytes(data)
    return paths


def test_signed_image_columns_match_the_manifest_written(signed_files):
    cells = read_provenance(signed_files["signed"])
    assert set(cells) == set(PROVENANCE_COLUMNS)
    common_name, organisation = _certificate_subject()
    assert cells["c2pa_status"] == "untrusted"  # the test certificate is on no trust list
    assert cells["c2pa_signer"] == f"{common_name} ({organisation})"
    assert cells["c2pa_claim_generator"] == "toolkit-test 2.5"
    assert cells["c2pa_source_type"] == "trainedAlgorithmicMedia"
    assert cells["c2pa_actions"] == "c2pa.created; c2pa.resized"
    assert cells["c2pa_codes"] == "signingCredential.untrusted"
    assert cells["c2pa_remote_url"] == ""
    assert cells["provenance_says_ai"] is True


def test_signer_under_a_trust_anchor_reads_valid(signed_files, monkeypatch):
    from deepfake_toolkit.provenance import TRUST_ANCHORS_ENV

    monkeypatch.setenv(TRUST_ANCHORS_ENV, str(FIXTURES / "es256_certs.pem"))
    cells = read_provenance(signed_files["signed"])
    assert cells["c2pa_status"] == "valid" and cells["c2pa_codes"] == ""
    assert read_provenance(signed_files["edited"])["c2pa_status"] == "invalid"


def test_camera_source_type_does_not_say_ai(signed_files):
    cells = read_provenance(signed_files["camera_signed"])
    assert cells["c2pa_source_type"] == "digitalCapture"
    assert cells["provenance_says_ai"] is False


def test_edited_after_signing_reads_invalid(signed_files):
    with Image.open(signed_files["edited"]) as edited, Image.open(signed_files["signed"]) as signed:
        assert np.any(np.asarray(edited) != np.asarray(signed))  # really other pixels
    cells = read_provenance(signed_files["edited"])
    assert cells["c2pa_status"] == "invalid"
    assert "assertion.dataHash.mismatch" in cells["c2pa_codes"].split("; ")
    assert cells["c2pa_source_type"] == "trainedAlgorithmicMedia"  # what the manifest claims


def test_damaged_manifest_reads_as_error(signed_files, tmp_path):
    data = bytearray(signed_files["signed"].read_bytes())
    start = data.index(b"jumb") + 20  # inside the manifest store's first box
    data[start:start + 8] = bytes(b ^ 0xFF for b in data[start:start + 8])
    (tmp_path / "damaged.jpg").write_bytes(bytes(data))
    cells = read_provenance(tmp_path / "damaged.jpg")
    assert cells["c2pa_status"] == "error" and cells["c2pa_codes"]
    assert cells["c2pa_signer"] == "" and cells["provenance_says_ai"] is False


def test_no_manifest_and_remote_manifest(signed_files):
    plain = read_provenance(signed_files["plain"])
    assert plain["c2pa_status"] == "none"
    assert all(plain[c] == "" for c in PROVENANCE_COLUMNS if c not in
               ("c2pa_status", "provenance_says_ai"))
    assert plain["provenance_says_ai"] is False
    remote = read_provenance(signed_files["remote"])
    assert remote["c2pa_status"] == "remote"
    assert remote["c2pa_remote_url"] == "https://example.org/m.c2pa"


def _exif(make="Canon", model="EOS 5D Mark IV", software="Adobe Lightroom 7.0",
          taken="2023:05:06 07:08:09", user_comment: bytes | None = None) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = make, model, software
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x9003] = taken
    if user_comment is not None:
        exif_ifd[0x9286] = user_comment
    return exif


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_only_file(tmp_path, fmt):
    path = tmp_path / f"camera.{fmt.lower()}"
    _pixels().save(path, fmt, exif=_exif())
    cells = read_provenance(path)
    assert (cells["exif_make"], cells["exif_model"], cells["exif_software"],
            cells["exif_datetime"]) == ("Canon", "EOS 5D Mark IV", "Adobe Lightroom 7.0",
                                        "2023:05:06 07:08:09")
    assert cells["generator"] == "" and cells["xmp_source_type"] == ""
    assert cells["provenance_says_ai"] is False


def test_png_sd_webui_parameters(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", SD_PARAMETERS)
    path = tmp_path / "sd.png"
    _pixels().save(path, pnginfo=info)
    cells = read_provenance(path)
    assert cells["generator"] == "Stable Diffusion web UI"
    assert cells["generator_model"] == "v1-5-pruned-emaonly"
    assert cells["generator_params"] == SD_PARAMETERS
    assert cells["provenance_says_ai"] is True


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize("byte_order", ["utf-16-be", "utf-16-le"])
def test_user_comment_sd_webui_parameters(tmp_path, fmt, byte_order):
    comment = b"UNICODE\x00" + SD_PARAMETERS.encode(byte_order)
    path = tmp_path / f"sd.{fmt.lower()}"
    _pixels().save(path, fmt, exif=_exif(make="", model="", software="", taken="",
                                          user_comment=comment))
    cells = read_provenance(path)
    assert cells["generator"] == "Stable Diffusion web UI"
    assert cells["generator_model"] == "v1-5-pruned-emaonly"
    assert cells["generator_params"] == SD_PARAMETERS
    assert cells["provenance_says_ai"] is True


def test_user_comment_prefixes():
    assert decode_user_comment(b"ASCII\x00\x00\x00hello") == "hello"
    assert decode_user_comment(b"UNICODE\x00" + "Grüße".encode("utf-16-be")) == "Grüße"
    assert decode_user_comment(None) == ""


def test_ordinary_user_comment_is_no_generator(tmp_path):
    path = tmp_path / "holiday.jpg"
    _pixels().save(path, exif=_exif(user_comment=b"ASCII\x00\x00\x00Holiday in Rome"))
    cells = read_provenance(path)
    assert cells["generator"] == "" and cells["provenance_says_ai"] is False


def test_comfyui_prompt_and_workflow(tmp_path):
    prompt = {"4": {"class_type": "CheckpointLoaderSimple",
                    "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
              "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a face", "clip": ["4", 1]}}}
    workflow = {"nodes": [{"id": 4, "type": "CheckpointLoaderSimple",
                           "widgets_values": ["flux1-dev.safetensors"]},
                          {"id": 6, "type": "CLIPTextEncode", "widgets_values": ["a face"]}]}
    both, only_workflow = PngImagePlugin.PngInfo(), PngImagePlugin.PngInfo()
    both.add_text("prompt", json.dumps(prompt))
    both.add_text("workflow", json.dumps(workflow))
    only_workflow.add_text("workflow", json.dumps(workflow))
    _pixels().save(tmp_path / "both.png", pnginfo=both)
    _pixels().save(tmp_path / "workflow.png", pnginfo=only_workflow)
    cells = read_provenance(tmp_path / "both.png")
    assert cells["generator"] == "ComfyUI"
    assert cells["generator_model"] == "sd_xl_base_1.0.safetensors"
    assert json.loads(cells["generator_params"]) == prompt
    assert cells["provenance_says_ai"] is True
    cells = read_provenance(tmp_path / "workflow.png")
    assert cells["generator_model"] == "flux1-dev.safetensors"


XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
       'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
       'xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
       '<Iptc4xmpExt:DigitalSourceType>{source}</Iptc4xmpExt:DigitalSourceType>'
       '<xmp:CreatorTool>{tool}</xmp:CreatorTool></rdf:Description></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("source, tool, ai", [
    ("trainedAlgorithmicMedia", "Image Creator 3", True),
    ("digitalCapture", "Camera firmware 1.2", False),
])
def test_xmp_digital_source_type(tmp_path, fmt, source, tool, ai):
    xmp = XMP.format(source=IPTC + source, tool=tool)
    path = tmp_path / f"xmp.{fmt.lower()}"
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        _pixels().save(path, pnginfo=info)
    else:
        _pixels().save(path, fmt, xmp=xmp.encode())
    cells = read_provenance(path)
    assert cells["xmp_source_type"] == source
    assert cells["xmp_creator_tool"] == tool
    assert cells["provenance_says_ai"] is ai


def test_unreadable_file_gives_empty_cells(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image at all")
    cells = read_provenance(path)
    assert cells["c2pa_status"] in ("none", "error")
    assert cells["exif_make"] == "" and cells["provenance_says_ai"] is False


def test_pipeline_rows_carry_the_files_provenance(signed_files, tmp_path):
    from deepfake_toolkit import classify_files, read_csv

    from .toy_models import BrightPatchScore, DetailScore, toy_detector

    camera = tmp_path / "camera.jpg"
    _pixels(3).save(camera, exif=_exif())
    files = [signed_files["signed"], signed_files["edited"], camera]
    models = [toy_detector(DetailScore(), "detail"), toy_detector(BrightPatchScore(), "bright")]
    out = tmp_path / "scores.csv"
    frame = classify_files(files, models, face_crop=False, progress=False, output_csv=out)
    assert len(frame) == 6
    back = read_csv(out)
    assert back["provenance_says_ai"].dtype == "boolean"
    for table in (frame, back):
        for path in files:
            expected = read_provenance(path)
            rows = table[table["path"] == str(path)]
            assert sorted(rows["model"]) == ["bright", "detail"]
            for column in PROVENANCE_COLUMNS:
                assert rows[column].tolist() == [expected[column]] * 2, column

    off = classify_files(files[:1], models[0], face_crop=False, progress=False,
                         provenance=False)
    assert off["c2pa_status"][0] == "" and off["exif_make"][0] == ""
    assert off["provenance_says_ai"].isna().all()


def test_cli_provenance_and_stability(signed_files, tmp_path, random_cnn_weights, capsys):
    from deepfake_toolkit import read_csv
    from deepfake_toolkit.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "signed.jpg").write_bytes(signed_files["signed"].read_bytes())
    _pixels(4).save(folder / "camera.jpg", exif=_exif())
    out = tmp_path / "out.csv"
    assert main(["classify", str(folder), "-o", str(out), "-m", "cnn", "--weights-dir",
                 str(random_cnn_weights), "--quiet", "--no-face-crop", "--stability"]) == 0
    assert "of 2 verdicts flipped under re-encoding" in capsys.readouterr().out
    table = read_csv(out).set_index("path")
    signed = table.loc[str(folder / "signed.jpg")]
    assert signed["c2pa_status"] == "untrusted" and signed["provenance_says_ai"]
    assert table.loc[str(folder / "camera.jpg"), "exif_make"] == "Canon"
    assert table["stability_scores"].str.count("=").tolist() == [3, 3]
    assert (table["stability_spread"] >= 0).all()


def test_without_c2pa_python_the_rest_is_read_and_the_cli_says_how(tmp_path, monkeypatch):
    import sys

    from deepfake_toolkit.cli import _provenance_note
    from deepfake_toolkit.results import results_frame

    path = tmp_path / "camera.jpg"
    _pixels().save(path, exif=_exif())
    monkeypatch.setitem(sys.modules, "c2pa", None)  # as if not installed
    cells = read_provenance(path)
    assert cells["c2pa_status"] == "unavailable" and cells["exif_make"] == "Canon"
    note = _provenance_note(results_frame([{"path": str(path), "model": "m", **cells}]))
    assert 'pip install "deepfake-toolkit[provenance]"' in note
    assert _provenance_note(results_frame([{"path": "x", "model": "m",
                                            "c2pa_status": "none"}])) is None
