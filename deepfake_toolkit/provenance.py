"""What an image file says about where it came from: C2PA Content Credentials and plain metadata.

One call, :func:`read_provenance`, reads a file's

- C2PA manifest with ``c2pa-python`` (the ``provenance`` extra), offline: remote manifests are not
  fetched (their address is recorded instead) and certificate revocation (OCSP) is not checked;
- IPTC/XMP ``DigitalSourceType`` and ``CreatorTool``;
- EXIF Make, Model, Software and DateTimeOriginal;
- generator parameters that image generators write: the Stable Diffusion web UIs (AUTOMATIC1111,
  Forge, ...) put them in PNG text ``parameters`` or in the EXIF UserComment of JPEG/WebP files,
  ComfyUI puts its graph in PNG text ``prompt`` and ``workflow``;

and sums them up in one flag, ``provenance_says_ai``.

What this evidence is worth: metadata that is present says what the tool that wrote it claimed;
metadata that is absent proves nothing, since most re-encoding (messaging apps, social networks,
screenshots) strips it. A valid C2PA signature proves who signed the manifest and that the file
has not changed since, not that what the image shows is true.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from .images import DECODED_FORMATS, path_suffix

C2PA_STATUSES = ("none", "valid", "untrusted", "invalid", "remote", "error", "unavailable")
"""Values of ``c2pa_status``:

- ``none``: no C2PA manifest in the file.
- ``valid``: a manifest whose signature and hashes check and whose certificate chains to a trust
  anchor (the PEM file named by :data:`TRUST_ANCHORS_ENV`; none by default).
- ``untrusted``: signature and hashes check, but the signing certificate is not on the trust
  list (test certificates, self-signed tools): the file is unchanged since signing, by a signer
  nobody vouches for.
- ``invalid``: the manifest does not match the file (edited after signing) or its signature fails;
  ``c2pa_codes`` says why.
- ``remote``: the file points to a manifest on the web (``c2pa_remote_url``), which is not fetched.
- ``error``: the manifest could not be read (damaged or unsupported); ``c2pa_codes`` says why.
- ``unavailable``: c2pa-python is not installed (``pip install "deepfake-toolkit[provenance]"``).
"""

PROVENANCE_COLUMNS: tuple[str, ...] = (
    "c2pa_status",
    "c2pa_signer",
    "c2pa_claim_generator",
    "c2pa_source_type",
    "c2pa_actions",
    "c2pa_codes",
    "c2pa_remote_url",
    "xmp_source_type",
    "xmp_creator_tool",
    "exif_make",
    "exif_model",
    "exif_software",
    "exif_datetime",
    "generator",
    "generator_model",
    "generator_params",
    "provenance_says_ai",
)
"""The provenance columns of the result schema (see :data:`deepfake_toolkit.results.COLUMNS`)."""

PROVENANCE_TEXT_COLUMNS = PROVENANCE_COLUMNS[:-1]

AI_SOURCE_TYPES = frozenset({
    "trainedAlgorithmicMedia",
    "compositeWithTrainedAlgorithmicMedia",
    "compositeSynthetic",
    "algorithmicMedia",
})
"""IPTC digital source types that say the image was generated (or composited) by an algorithm."""

GENERATOR_SOFTWARE = ("midjourney", "dall-e", "dall·e", "stable diffusion", "novelai",
                      "comfyui", "invokeai", "adobe firefly", "imagen", "flux")
"""Lower-case names that, found in EXIF Software or XMP CreatorTool, name an image generator."""

SD_WEBUI = "Stable Diffusion web UI"
COMFYUI = "ComfyUI"
MAX_PARAMS_CHARS = 2000
"""Longest ``generator_params`` text kept (prompts and ComfyUI graphs can be very long)."""

_EXIF_IFD = 0x8769
_EXIF_MAKE, _EXIF_MODEL, _EXIF_SOFTWARE = 0x010F, 0x0110, 0x0131
_EXIF_DATETIME_ORIGINAL, _EXIF_USER_COMMENT = 0x9003, 0x9286
_C2PA_SETTINGS = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
TRUST_ANCHORS_ENV = "DEEPFAKE_TOOLKIT_C2PA_TRUST_ANCHORS"
"""Environment variable naming a PEM file of certificates to trust as C2PA signers' roots (e.g. a
saved copy of the C2PA trust list). Without it no signer is trusted: intact manifests read as
"untrusted"."""
_REMOTE_URL = re.compile(r"from url (\S+)")
_COMFY_MODEL_INPUTS = ("ckpt_name", "unet_name", "model_name")


def empty_provenance() -> dict[str, Any]:
    """Provenance cells of a row whose file was not checked (all empty, flag missing)."""
    cells: dict[str, Any] = {column: "" for column in PROVENANCE_TEXT_COLUMNS}
    cells["provenance_says_ai"] = None
    return cells


def c2pa_available() -> bool:
    """Whether c2pa-python can be imported (the ``provenance`` extra)."""
    try:
        import c2pa  # noqa: F401
    except ImportError:
        return False
    return True


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file's C2PA manifest and metadata into the provenance columns.

    Never raises for a bad file: what cannot be read stays empty (and ``c2pa_status`` says
    "error" when the manifest could not be read). Nothing goes to the network.

    Args:
        path: The image file.

    Returns:
        One value per name in :data:`PROVENANCE_COLUMNS`: text ("" when absent), and
        ``provenance_says_ai`` True when any of the file's metadata says it was generated (a C2PA
        or XMP digital source type in :data:`AI_SOURCE_TYPES`, generator parameters, or a known
        generator named as Software or CreatorTool), else False.

    Example:
        >>> read_provenance("photo.jpg")["c2pa_status"]  # doctest: +SKIP
        'none'
    """
    cells = empty_provenance()
    cells.update(read_c2pa(path))
    cells.update(read_metadata(path))
    cells["provenance_says_ai"] = says_ai(cells)
    return cells


def says_ai(cells: dict[str, Any]) -> bool:
    """Whether the provenance cells of a file say it was generated (see :func:`read_provenance`)."""
    source_types = {*_split(cells.get("c2pa_source_type", "")),
                    *_split(cells.get("xmp_source_type", ""))}
    if source_types & AI_SOURCE_TYPES or cells.get("generator"):
        return True
    tools = f"{cells.get('exif_software', '')} {cells.get('xmp_creator_tool', '')}".lower()
    return any(name in tools for name in GENERATOR_SOFTWARE)


def _split(text: str) -> list[str]:
    return [part for part in text.split("; ") if part]


# --- C2PA ---------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _c2pa_context(pid: int, trust_anchors: str):
    # One context per process: DataLoader workers are forked, and a native handle should not be
    # shared across a fork.
    import c2pa

    settings: dict[str, Any] = dict(_C2PA_SETTINGS)
    if trust_anchors:
        settings["trust"] = {"trust_anchors": Path(trust_anchors).expanduser().read_text()}
    return c2pa.Context.from_dict(settings)


def read_c2pa(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``c2pa_*`` columns of a file (see :data:`C2PA_STATUSES` for ``c2pa_status``)."""
    try:
        import c2pa
    except ImportError:
        return {"c2pa_status": "unavailable"}
    try:
        context = _c2pa_context(os.getpid(), os.environ.get(TRUST_ANCHORS_ENV, ""))
        # The file opened here and given as a stream, with the format its extension names (as
        # c2pa does for a path, which it reads the same way): c2pa parses a path with pathlib,
        # which interns every file name in a table that never shrinks.
        with open(os.fspath(path), "rb") as stream:
            with c2pa.Reader(_c2pa_format(path), stream, context=context) as reader:
                store = json.loads(reader.json())
                remote_url = reader.get_remote_url() or ""
    except c2pa.C2paError as exc:
        message = str(exc)
        kind = type(exc).__name__
        if "ManifestNotFound" in kind or message.startswith("ManifestNotFound"):
            return {"c2pa_status": "none"}
        if message.startswith("Remote"):
            found = _REMOTE_URL.search(message)
            return {"c2pa_status": "remote", "c2pa_remote_url": found.group(1) if found else ""}
        if message.startswith("NotSupported"):
            return {"c2pa_status": "none"}
        return {"c2pa_status": "error", "c2pa_codes": message}
    except Exception as exc:  # noqa: BLE001 - a damaged file must not stop a run
        return {"c2pa_status": "error", "c2pa_codes": f"{type(exc).__name__}: {exc}"}
    return _c2pa_cells(store, remote_url)


def _c2pa_format(path: str | os.PathLike[str]) -> str | None:
    """The MIME type c2pa would take from the file's extension; None: c2pa reads it from the
    bytes."""
    if path_suffix(path) == ".dng":
        return "image/dng"  # mimetypes guesses another type (as c2pa notes)
    return mimetypes.guess_type(os.fspath(path))[0]


def _c2pa_cells(store: dict[str, Any], remote_url: str) -> dict[str, str]:
    manifest = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    codes = [entry.get("code", "") for entry in store.get("validation_status") or []]
    state = str(store.get("validation_state", "")).lower()
    untrusted = "signingCredential.untrusted" in codes
    if state == "trusted":
        status = "valid"
    elif state == "valid":
        # Well-formed and cryptographically intact; "Trusted" would also need a trusted signer.
        status = "untrusted" if untrusted else "valid"
    elif state == "invalid" or any(code != "signingCredential.untrusted" for code in codes):
        status = "invalid"
    else:
        status = "untrusted" if untrusted else "error"
    signature = manifest.get("signature_info") or {}
    common_name, issuer = signature.get("common_name", ""), signature.get("issuer", "")
    signer = f"{common_name} ({issuer})" if common_name and issuer else common_name or issuer
    actions, source_types = [], []
    for assertion in manifest.get("assertions") or []:
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions") or []:
                actions.append(str(action.get("action", "")))
                if action.get("digitalSourceType"):
                    source_types.append(_source_type_name(action["digitalSourceType"]))
    return {
        "c2pa_status": status,
        "c2pa_signer": signer,
        "c2pa_claim_generator": _claim_generator(manifest),
        "c2pa_source_type": "; ".join(dict.fromkeys(source_types)),
        "c2pa_actions": "; ".join(a for a in actions if a),
        "c2pa_codes": "; ".join(code for code in codes if code),
        "c2pa_remote_url": remote_url,
    }


def _claim_generator(manifest: dict[str, Any]) -> str:
    if manifest.get("claim_generator"):
        return str(manifest["claim_generator"])
    parts = []
    for info in manifest.get("claim_generator_info") or []:
        name, version = info.get("name", ""), info.get("version", "")
        parts.append(f"{name} {version}".strip())
    return "; ".join(p for p in parts if p)


def _source_type_name(value: Any) -> str:
    """``trainedAlgorithmicMedia`` from the IPTC code's URL (or the bare name)."""
    return str(value).rstrip("/").rsplit("/", 1)[-1]


# --- Pillow: XMP, EXIF, generator parameters ----------------------------------------------------

def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The XMP, EXIF and generator columns of a file, read with Pillow (no pixels decoded)."""
    cells: dict[str, str] = {}
    try:
        # The path as given, not a Path: pathlib interns every file name it parses, in a table
        # that never shrinks (a few MB per worker over 100,000 files).
        with Image.open(os.fspath(path), formats=DECODED_FORMATS) as image:
            cells.update(_xmp_cells(image))
            exif = image.getexif()
            exif_ifd = exif.get_ifd(_EXIF_IFD)
            cells.update(
                exif_make=_text(exif.get(_EXIF_MAKE)),
                exif_model=_text(exif.get(_EXIF_MODEL)),
                exif_software=_text(exif.get(_EXIF_SOFTWARE)),
                exif_datetime=_text(exif_ifd.get(_EXIF_DATETIME_ORIGINAL)),
            )
            text_chunks = {str(k): v for k, v in (getattr(image, "text", None) or {}).items()
                           if isinstance(v, str)}
            comment = decode_user_comment(exif_ifd.get(_EXIF_USER_COMMENT))
    except Exception:  # noqa: BLE001 - unreadable files are reported by the decoding step
        return cells
    cells.update(parse_generator(text_chunks, comment))
    return cells


def _xmp_cells(image: Image.Image) -> dict[str, str]:
    try:
        xmp = image.getxmp()
    except Exception:  # noqa: BLE001 - malformed XMP is treated as absent
        return {}
    source_types = [_source_type_name(v) for v in _find_values(xmp, "DigitalSourceType")]
    tools = _find_values(xmp, "CreatorTool")
    return {"xmp_source_type": "; ".join(dict.fromkeys(source_types)),
            "xmp_creator_tool": "; ".join(dict.fromkeys(tools))}


def _find_values(tree: Any, key: str) -> list[str]:
    """Every text value under ``key`` in Pillow's XMP dictionary (attributes or elements)."""
    found: list[str] = []
    if isinstance(tree, dict):
        for name, value in tree.items():
            if name == key:
                found.extend(_leaf_texts(value))
            else:
                found.extend(_find_values(value, key))
    elif isinstance(tree, list):
        for value in tree:
            found.extend(_find_values(value, key))
    return found


def _leaf_texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaf_texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _leaf_texts(v)]
    return []


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return str(value).replace("\x00", "").strip()


def decode_user_comment(value: Any) -> str:
    """Text of an EXIF UserComment: an 8-byte character-code prefix, then the text.

    "UNICODE\\0" is followed by UTF-16 (big-endian as piexif and the Stable Diffusion web UI write
    it; little-endian is recognised by its zero bytes), "ASCII\\0\\0\\0" and an empty prefix by
    ASCII or UTF-8.
    """
    if isinstance(value, str):
        return value.replace("\x00", "").strip()
    if not isinstance(value, bytes) or not value:
        return ""
    prefix, payload = value[:8], value[8:]
    if prefix == b"UNICODE\x00":
        if payload[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = payload.decode("utf-16", errors="replace")
        else:
            # ASCII text in UTF-16BE has its zero bytes first in each pair, in LE second.
            big = payload[0::2].count(0) >= payload[1::2].count(0)
            text = payload.decode("utf-16-be" if big else "utf-16-le", errors="replace")
    elif prefix in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        text = payload.decode("utf-8", errors="replace")
    else:
        text = value.decode("utf-8", errors="replace")
    return text.replace("\x00", "").strip()


def parse_generator(text_chunks: dict[str, str], user_comment: str = "") -> dict[str, str]:
    """The ``generator*`` columns from PNG text chunks and an EXIF UserComment.

    Args:
        text_chunks: PNG tEXt/iTXt/zTXt chunks by keyword.
        user_comment: Decoded EXIF UserComment (JPEG and WebP files of the SD web UIs).

    Returns:
        ``generator`` (the tool), ``generator_model`` (the checkpoint it names) and
        ``generator_params`` (the raw text, at most :data:`MAX_PARAMS_CHARS` characters), or an
        empty dict when no generator wrote there.
    """
    parameters = text_chunks.get("parameters") or (
        user_comment if _looks_like_sd_parameters(user_comment) else "")
    if parameters:
        settings = _sd_settings(parameters)
        return {"generator": SD_WEBUI,
                "generator_model": settings.get("Model") or settings.get("Model hash", ""),
                "generator_params": parameters[:MAX_PARAMS_CHARS]}
    graph_text = text_chunks.get("prompt") or text_chunks.get("workflow")
    if graph_text:
        try:
            graph = json.loads(graph_text)
        except ValueError:
            return {}
        return {"generator": COMFYUI, "generator_model": "; ".join(_comfy_models(graph)),
                "generator_params": graph_text[:MAX_PARAMS_CHARS]}
    return {}


def _looks_like_sd_parameters(text: str) -> bool:
    return bool(text) and "Steps: " in text and ("Sampler: " in text or "Seed: " in text)


def _sd_settings(parameters: str) -> dict[str, str]:
    """The "Key: value, Key: value" line the SD web UIs write last (values may be quoted)."""
    last = parameters.strip().splitlines()[-1]
    settings = {}
    for match in re.finditer(r'\s*([\w /.-]+):\s*("(?:\\.|[^"\\])*"|[^,]*)(?:,|$)', last):
        settings[match.group(1).strip()] = match.group(2).strip().strip('"')
    return settings


def _comfy_models(graph: Any) -> list[str]:
    """Checkpoint names in a ComfyUI API graph ("prompt") or UI workflow ("workflow")."""
    names: list[str] = []
    if isinstance(graph, dict) and isinstance(graph.get("nodes"), list):
        for node in graph["nodes"]:
            kind = str(node.get("type", "")) if isinstance(node, dict) else ""
            if "CheckpointLoader" in kind or kind == "UNETLoader":
                values = node.get("widgets_values") or []
                if values and isinstance(values[0], str):
                    names.append(values[0])
    elif isinstance(graph, dict):
        for node in graph.values():
            inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
            for key in _COMFY_MODEL_INPUTS:
                if isinstance(inputs.get(key), str):
                    names.append(inputs[key])
    return list(dict.fromkeys(names))
