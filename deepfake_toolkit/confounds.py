"""The confound check: do real and fake images differ in something other than being fake?

A detector can learn the file format, the JPEG quality or the image size of a data set instead of
the fake. :func:`file_facts` reads these facts from the file headers; :func:`confound_check`
measures how well each alone tells the classes apart.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .labels import ALL_IMAGES, FAKE, REAL, subset_views
from .metrics import two_classes
from .perturbations import CLEAN

__all__ = [
    "CONFOUND_MAX_P", "CONFOUND_WARN_AT", "ConfoundWarning", "confound_check",
    "confound_messages", "estimate_jpeg_quality", "file_facts",
]

CONFOUND_WARN_AT = 0.7
"""A nuisance feature whose AUC alone is at least this far from chance (>= 0.7 or <= 0.3) is
reported as a confound (when the difference is also unlikely to be chance, see
:data:`CONFOUND_MAX_P`)."""
CONFOUND_MAX_P = 0.01
"""Largest Mann-Whitney p-value at which a nuisance feature is flagged, so that a handful of
images differing by chance raise no alarm."""


class ConfoundWarning(UserWarning):
    """Real and fake images differ in something other than being fake (format, size, ...)."""


def _ijg_quantisation_tables() -> np.ndarray:
    """The IJG (libjpeg) luminance tables for quality 1..100, in natural (row-major) order."""
    base = np.array([
        16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
        14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
        18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
        49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
    ], dtype=np.int64)
    qualities = np.arange(1, 101)
    scale = np.where(qualities < 50, 5000 // qualities, 200 - 2 * qualities)
    return np.clip((base[None, :] * scale[:, None] + 50) // 100, 1, 255)


_IJG_TABLES = _ijg_quantisation_tables()


def estimate_jpeg_quality(quantization: Mapping[int, Sequence[int]]) -> float:
    """Estimate the IJG quality (1-100) a JPEG was saved at from its luminance table.

    The table is compared with the tables libjpeg makes for every quality; the closest one wins.
    Exact for files written by libjpeg-based encoders (Pillow, OpenCV, most web tools); for
    cameras and editors with their own tables it is the nearest equivalent quality.

    Args:
        quantization: Pillow's ``image.quantization`` (table id -> 64 values, natural order).

    Returns:
        The estimated quality, or NaN when there is no 64-entry luminance table.
    """
    table = quantization.get(0) if quantization else None
    if table is None or len(table) != 64:
        return math.nan
    distance = np.abs(_IJG_TABLES - np.asarray(table, dtype=np.int64)[None, :]).sum(axis=1)
    return float(np.argmin(distance) + 1)


def file_facts(paths: Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Format, JPEG quality and size of each file (headers only; pixels are not decoded).

    Returns:
        A table with columns path, file_format, jpeg_quality, file_bytes; unreadable files get
        "" and missing values.
    """
    rows = []
    for path in paths:
        file_format, quality, size = "", math.nan, math.nan
        try:
            size = float(os.stat(path).st_size)
            with Image.open(path) as image:
                file_format = (image.format or "").lower()
                quantization = getattr(image, "quantization", None)
                if quantization:
                    quality = estimate_jpeg_quality(quantization)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            pass
        rows.append((str(path), file_format, quality, size))
    return pd.DataFrame(rows, columns=["path", "file_format", "jpeg_quality", "file_bytes"])


def _feature_auc(y_true: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """AUC of a feature at telling fake from real, and the two-sided Mann-Whitney p-value of
    the difference (NaNs when a class has no value)."""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score

    keep = ~np.isnan(values)
    y_true, values = y_true[keep], values[keep]
    if not two_classes(y_true):
        return math.nan, math.nan
    auc = float(roc_auc_score(y_true, values))
    if np.ptp(values) == 0:
        return auc, 1.0
    p_value = mannwhitneyu(values[y_true == 1], values[y_true == 0]).pvalue
    return auc, float(p_value)


def _format_shares(formats: pd.Series) -> str:
    shares = formats.replace("", "unreadable").value_counts(normalize=True)
    return ", ".join(f"{name} {share:.0%}" for name, share in shares.head(3).items())


def _median_text(values: pd.Series, unit: str, scale: float = 1.0) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    median = values.median() / scale
    return f"median {median:,.0f}{unit}" if abs(median) >= 100 else f"median {median:.3g}{unit}"


def confound_check(per_image: pd.DataFrame, warn_at: float = CONFOUND_WARN_AT,
                   max_p: float = CONFOUND_MAX_P) -> pd.DataFrame:
    """Check whether real and fake images differ in things a detector should not care about.

    A detector can learn the file format or the image size instead of the fake. For each
    nuisance feature - file format, JPEG quality (JPEGs only), resolution (pixels), file size and
    bytes per pixel - the ROC AUC of the feature *alone* at telling fake from real is computed
    (for the format, each format's in-sample share of fakes serves as its score). An AUC near 0.5
    means the classes look alike; far from it (>= ``warn_at`` or <= 1 - ``warn_at``) means a
    model could score well on this set without looking at faces at all. A feature is flagged
    only when the difference is also unlikely to be chance (Mann-Whitney p-value < ``max_p``),
    so a few images cannot raise an alarm on their own.

    Args:
        per_image: A per-image table (only unperturbed rows and one model's copy are used).
        warn_at: Separability, max(AUC, 1 - AUC), from which a feature is flagged.
        max_p: Largest p-value at which a feature is flagged.

    Returns:
        One row per (subset, feature): subset, feature, auc, separability, p_value, real, fake
        (short summaries of each class), confounded (bool).
    """
    clean = per_image
    if "perturbation" in per_image:
        clean = per_image[per_image["perturbation"] == CLEAN]
    images = clean[clean["true_label"].isin([REAL, FAKE])].drop_duplicates("path")
    rows = []
    for subset, rows_in, _ in subset_views(images):
        y_true = (rows_in["true_label"] == FAKE).to_numpy(int)
        is_fake = y_true == 1
        width = _numeric_column(rows_in, "width")
        height = _numeric_column(rows_in, "height")
        pixels = width * height
        size = _numeric_column(rows_in, "file_bytes")
        quality = _numeric_column(rows_in, "jpeg_quality")
        formats = rows_in["file_format"].fillna("").astype(str) if "file_format" in rows_in \
            else pd.Series("", index=rows_in.index)
        fake_share = formats.map(pd.Series(is_fake, index=rows_in.index).groupby(formats).mean())
        features = [
            ("file format", fake_share.to_numpy(float),
             _format_shares(formats[~is_fake]), _format_shares(formats[is_fake])),
            ("JPEG quality", quality.to_numpy(float),
             _median_text(quality[~is_fake], ""), _median_text(quality[is_fake], "")),
            ("resolution (pixels)", pixels.to_numpy(float),
             _resolution_text(width[~is_fake], height[~is_fake]),
             _resolution_text(width[is_fake], height[is_fake])),
            ("file size (bytes)", size.to_numpy(float),
             _median_text(size[~is_fake], " kB", 1000), _median_text(size[is_fake], " kB", 1000)),
            ("bytes per pixel", (size / pixels).to_numpy(float),
             _ratio_text((size / pixels)[~is_fake]), _ratio_text((size / pixels)[is_fake])),
        ]
        for name, values, real_text, fake_text in features:
            auc, p_value = _feature_auc(y_true, values)
            separability = max(auc, 1 - auc) if not math.isnan(auc) else math.nan
            rows.append({"subset": subset, "feature": name, "auc": auc,
                         "separability": separability, "p_value": p_value, "real": real_text,
                         "fake": fake_text,
                         "confounded": bool(separability >= warn_at and p_value < max_p)})
    return pd.DataFrame(rows, columns=["subset", "feature", "auc", "separability", "p_value",
                                       "real", "fake", "confounded"])


def _numeric_column(table: pd.DataFrame, column: str) -> pd.Series:
    if column not in table:
        return pd.Series(np.nan, index=table.index)
    return pd.to_numeric(table[column], errors="coerce").astype(float)


def _resolution_text(width: pd.Series, height: pd.Series) -> str:
    if width.dropna().empty:
        return "-"
    return f"median {width.median():.0f}x{height.median():.0f} px"


def _ratio_text(values: pd.Series) -> str:
    values = values.dropna()
    return f"median {values.median():.2f}" if len(values) else "-"


def confound_messages(confounds: pd.DataFrame) -> list[str]:
    """One sentence per feature flagged by :func:`confound_check` (in all images or a subset)."""
    messages = []
    flagged = confounds[confounds["confounded"]]
    for feature, rows in flagged.groupby("feature", sort=False):
        first = rows.iloc[0]
        where = "" if first["subset"] == ALL_IMAGES else f" in subset {first['subset']}"
        others = [s for s in rows["subset"] if s != first["subset"]]
        also = f" The same holds in subsets: {', '.join(others)}." if others else ""
        messages.append(
            f"Real and fake images{where} differ in {feature}: that feature alone tells them "
            f"apart with AUC {first['separability']:.2f} (real: {first['real']}; fake: "
            f"{first['fake']}).{also} A detector may score well here by learning this instead of "
            "the fake: balance the classes on it, or re-encode both the same way, before trusting "
            "the metrics.")
    return messages
