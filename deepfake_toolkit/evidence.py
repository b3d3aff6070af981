"""Summaries of the evidence beside the scores: provenance and stability, per group of images.

Used by the HTML report of ``deepfake-toolkit evaluate`` (per true class) and the explorer. Shares
are of the files in each group; provenance is counted once per file, stability once per file and
model.
"""

from __future__ import annotations

import pandas as pd

from .provenance import AI_SOURCE_TYPES

MANIFEST_STATUSES = ("valid", "untrusted", "invalid", "remote", "error")
"""``c2pa_status`` values that mean the file carries (or points to) a C2PA manifest."""

EVIDENCE_CAVEAT = (
    "Provenance: metadata that is present says what the tool that wrote it claimed; metadata that "
    "is absent proves nothing, since re-encoding (messaging apps, social networks, screenshots) "
    "strips it. A valid C2PA signature proves who signed the manifest and that the file is "
    "unchanged since, not that what the image shows is true. Stability: a verdict that flips "
    "under JPEG 90/75 or a 0.75 downscale is labelled uncertain; a stable verdict can still be "
    "wrong.")
"""What the provenance and stability columns can and cannot show, for reports and the explorer."""

EVIDENCE_SUMMARY_COLUMNS = ("model", "group", "files", "provenance_checked", "c2pa_manifest",
                            "c2pa_says_ai", "c2pa_invalid", "says_ai", "camera_exif",
                            "generator_metadata", "stability_checked", "verdict_flipped",
                            "median_spread")
"""Columns of :func:`evidence_summary`: counts (files) and shares of the group."""


def evidence_summary(table: pd.DataFrame, by: str = "true_label") -> pd.DataFrame:
    """Per model and group: how often each kind of evidence was found.

    Args:
        table: A result or per-image table with the provenance and stability columns (rows of
            perturbed copies, when a ``perturbation`` column marks them, are left out).
        by: The column that forms the groups (e.g. ``true_label``); a missing column puts every
            file in one group "all".

    Returns:
        :data:`EVIDENCE_SUMMARY_COLUMNS`: ``files`` and ``provenance_checked`` /
        ``stability_checked`` are counts; ``c2pa_manifest`` (a manifest is present or pointed
        to), ``c2pa_says_ai`` (its digital source type says generated), ``c2pa_invalid``,
        ``says_ai`` (``provenance_says_ai``), ``camera_exif`` (EXIF names a camera make),
        ``generator_metadata`` (generator parameters found) are shares of the files whose
        provenance was checked; ``verdict_flipped`` is the share of stability-checked files
        labelled uncertain by the check and ``median_spread`` their median score spread. Empty
        when the table has none of these columns.
    """
    if "c2pa_status" not in table and "stability_spread" not in table:
        return pd.DataFrame(columns=list(EVIDENCE_SUMMARY_COLUMNS))
    rows = table
    if "perturbation" in rows:
        rows = rows[rows["perturbation"].isin(["none", ""])]
    rows = rows.assign(group=rows[by].astype(str) if by in rows else "all")
    records = []
    for (model, group), part in rows.groupby(["model", "group"], sort=True):
        record = {"model": model, "group": group, "files": int(part["path"].nunique())}
        record.update(_provenance_shares(part))
        record.update(_stability_shares(part))
        records.append(record)
    return pd.DataFrame(records, columns=list(EVIDENCE_SUMMARY_COLUMNS))


def _provenance_shares(part: pd.DataFrame) -> dict[str, float]:
    if "c2pa_status" not in part:
        return {"provenance_checked": 0}
    checked = part[part["c2pa_status"].fillna("") != ""].drop_duplicates("path")
    if checked.empty:
        return {"provenance_checked": 0}
    says_ai = checked["provenance_says_ai"].astype("boolean").fillna(False).astype(bool)
    manifest = checked["c2pa_status"].isin(MANIFEST_STATUSES)
    c2pa_ai = checked["c2pa_source_type"].fillna("").map(
        lambda text: bool(set(text.split("; ")) & AI_SOURCE_TYPES))
    return {
        "provenance_checked": len(checked),
        "c2pa_manifest": manifest.mean(),
        "c2pa_says_ai": c2pa_ai.mean(),
        "c2pa_invalid": (checked["c2pa_status"] == "invalid").mean(),
        "says_ai": says_ai.mean(),
        "camera_exif": (checked["exif_make"].fillna("") != "").mean(),
        "generator_metadata": (checked["generator"].fillna("") != "").mean(),
    }


def _stability_shares(part: pd.DataFrame) -> dict[str, float]:
    if "stability_spread" not in part:
        return {"stability_checked": 0}
    checked = part[pd.to_numeric(part["stability_spread"], errors="coerce").notna()]
    if checked.empty:
        return {"stability_checked": 0}
    return {"stability_checked": len(checked),
            "verdict_flipped": (checked["stability_reason"].fillna("") != "").mean(),
            "median_spread": float(pd.to_numeric(checked["stability_spread"]).median())}
