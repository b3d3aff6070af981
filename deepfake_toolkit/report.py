"""Writing an evaluation to a folder: per-image CSV, metric tables (CSV and JSON), operating
points and a self-contained HTML report.

The HTML report embeds plotly.js inline (no CDN, no network), so it opens offline, can be mailed
as one file, and shows the same thing years later.
"""

from __future__ import annotations

import html
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import pandas as pd

from .labels import ALL_IMAGES
from .operating_points import OperatingPoint, save_operating_points
from .per_image import write_per_image
from .results import write_csv

if TYPE_CHECKING:
    import plotly.graph_objects as go


class Evaluated(Protocol):
    """What a report shows of an evaluation (:class:`deepfake_toolkit.evaluate.Evaluation` is
    one); the report reads these tables and never runs an evaluation itself."""

    per_image: pd.DataFrame
    metrics: pd.DataFrame
    reliability: pd.DataFrame
    robustness: pd.DataFrame
    confounds: pd.DataFrame
    operating_points: Mapping[str, OperatingPoint]
    notes: list[str]
    settings: dict[str, Any]
    heatmaps: pd.DataFrame | None

    @property
    def models(self) -> list[str]: ...

    @property
    def overall(self) -> pd.DataFrame: ...

    @property
    def warnings(self) -> list[str]: ...

    def figures(self) -> dict[str, go.Figure]: ...

FILE_NAMES = {
    "per_image": "per_image.csv",
    "metrics_csv": "metrics.csv",
    "metrics_json": "metrics.json",
    "robustness": "robustness.csv",
    "confounds": "confounds.csv",
    "reliability": "reliability.csv",
    "operating_points": "operating_points.json",
    "report": "report.html",
}
"""What :func:`write_report` writes, by kind."""

SUMMARY_COLUMNS = ("model", "n_real", "n_fake", "n_unscored", "auc", "auc_low", "auc_high",
                   "average_precision", "eer", "tpr_at_fpr_1pct", "tpr_at_fpr_5pct", "threshold",
                   "accuracy", "balanced_accuracy", "balanced_accuracy_low",
                   "balanced_accuracy_high", "precision", "recall", "f1", "real_accuracy",
                   "fake_accuracy", "ece", "brier")
"""Columns of the report's headline table."""

FIGURE_TEXT = {
    "roc": "ROC curves: every threshold at once. The low-FPR end matters most when a false "
           "accusation is costly.",
    "pr": "Precision-recall curves: how many 'fake' verdicts are right, as more fakes are caught.",
    "histogram": "Scores per class; the dashed line is the model's threshold.",
    "reliability": "Reliability: on the diagonal, a score of 0.8 means 80% of such images are "
                   "fake. Markers grow with the number of images in the bin.",
    "confusion": "Confusion matrices at each model's threshold (share of the true class).",
    "subsets": "AUC per subset with 95% bootstrap intervals. Subsets with one class are compared "
               "with all images of the other class.",
    "robustness": "AUC when the same perturbation is applied to real and fake images alike.",
}


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    # to_json turns NaN into null and numpy scalars into plain numbers.
    return json.loads(frame.to_json(orient="records", double_precision=10))


def _table_html(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p>(none)</p>"
    return frame.to_html(index=False, escape=True, na_rep="-", border=0, classes="table",
                         float_format=lambda v: f"{v:.3f}")


def _list_html(items: list[str], css_class: str) -> str:
    if not items:
        return ""
    return f'<ul class="{css_class}">' + "".join(f"<li>{html.escape(t)}</li>" for t in items) + \
        "</ul>"


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; }
.table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
.table th, .table td { padding: 3px 8px; border-bottom: 1px solid #eee; text-align: right; }
.table th { background: #f5f5f5; }
.warnings li { color: #9a3412; margin-bottom: 0.4em; }
.notes li { color: #444; margin-bottom: 0.4em; }
.caption { color: #555; font-size: 0.9em; }
.scroll { overflow-x: auto; }
"""


def report_html(evaluation: Evaluated, title: str = "Deepfake detector evaluation") -> str:
    """The evaluation as one self-contained HTML page (plotly.js inline)."""
    from plotly.offline import get_plotlyjs

    from . import __version__

    settings = evaluation.settings
    created = settings.get("created") or datetime.now(timezone.utc).isoformat(timespec="seconds")
    n_images = evaluation.per_image["path"].nunique()
    meta = [f"created {created}", f"deepfake_toolkit {__version__}",
            f"{n_images} images", f"models: {', '.join(evaluation.models)}"]
    for key in ("root", "labels", "face_crop"):
        if key in settings:
            meta.append(f"{key.replace('_', ' ')}: {settings[key]}")
    overall = evaluation.overall
    summary = overall[[c for c in SUMMARY_COLUMNS if c in overall]]
    nan = float("nan")
    points = pd.DataFrame([{"model": p.model, "rule": p.describe(), "fitted on": p.fitted_on,
                            "fitted on real/fake": f"{p.n_real}/{p.n_fake}" if p.n_real else "",
                            "temperature": p.calibration.temperature
                            if p.calibration and p.calibration.method == "temperature" else nan,
                            "slope": p.calibration.slope if p.calibration else nan,
                            "intercept": p.calibration.intercept if p.calibration else nan}
                           for p in evaluation.operating_points.values()])
    figures = evaluation.figures()
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(" · ".join(meta))}</p>',
        "<p>Fake is the positive class. Scores are evidence to weigh, not proof: these numbers "
        "hold for these images, and a detector can do much worse on images from other sources "
        "or generators.</p>",
    ]
    if evaluation.warnings:
        parts += ["<h2>Warnings</h2>", _list_html(evaluation.warnings, "warnings")]
    if evaluation.notes:
        parts += ["<h2>Notes</h2>", _list_html(evaluation.notes, "notes")]
    parts += ["<h2>Summary (all images)</h2>", f'<div class="scroll">{_table_html(summary)}</div>',
              "<h2>Operating points</h2>", _table_html(points)]
    for name, figure in figures.items():
        parts += [f"<h2>{html.escape(figure.layout.title.text or name)}</h2>",
                  f'<p class="caption">{html.escape(FIGURE_TEXT.get(name, ""))}</p>',
                  figure.to_html(full_html=False, include_plotlyjs=False,
                                 default_height="480px", config={"displaylogo": False})]
    per_subset = evaluation.metrics[evaluation.metrics["subset"] != ALL_IMAGES]
    if len(per_subset):
        columns = ["model", "subset", "other_class_from_all",
                   *[c for c in SUMMARY_COLUMNS if c != "model"]]
        parts += ["<h2>Per subset</h2>",
                  f'<div class="scroll">{_table_html(per_subset[columns])}</div>']
    if not evaluation.robustness.empty:
        parts += ["<h2>Robustness table</h2>", _table_html(evaluation.robustness)]
    parts += _evidence_html(evaluation.per_image)
    parts += _heatmaps_html(evaluation.heatmaps)
    parts += ["<h2>Confound check</h2>",
              '<p class="caption">How well each nuisance feature alone separates fake from real '
              "(AUC; 0.5 = not at all). Flagged features can let a detector score well without "
              "seeing the fake.</p>", _table_html(evaluation.confounds),
              "</body></html>"]
    return "\n".join(parts)


def _evidence_html(per_image: pd.DataFrame) -> list[str]:
    """The provenance and stability summary per true class, with what it cannot show."""
    from .evidence import EVIDENCE_CAVEAT, evidence_summary

    summary = evidence_summary(per_image, by="true_label").rename(columns={"group": "class"})
    checked = summary[(summary["provenance_checked"] > 0) | (summary["stability_checked"] > 0)]
    if checked.empty:
        return []
    return ["<h2>Provenance and stability per class</h2>",
            '<p class="caption">Counts of files, and shares of the files checked: a C2PA '
            "manifest present, its digital source type saying generated, the manifest invalid, "
            "any metadata saying generated (C2PA, XMP, generator parameters or a generator named "
            "as software), a camera make in EXIF, generator parameters; and the share of verdicts "
            "that flipped under re-encoding with the median score spread.</p>",
            f'<div class="scroll">{_table_html(checked)}</div>',
            f'<p class="caption">{html.escape(EVIDENCE_CAVEAT)}</p>']


HEATMAP_SIDE = 320
"""Longest side, in pixels, of a heatmap embedded in the report."""


def _heatmaps_html(heatmaps: pd.DataFrame | None) -> list[str]:
    """The heatmaps (whole image with the map over the scored crop), embedded as PNG data."""
    import base64
    import io

    from PIL import Image

    if heatmaps is None or heatmaps.empty:
        return []
    cards = []
    for row in heatmaps[heatmaps["error"] == ""].itertuples(index=False):
        with Image.open(row.image_file) as image:
            image = image.convert("RGB")
            image.thumbnail((HEATMAP_SIDE, HEATMAP_SIDE))
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        group = getattr(row, "true_label", "")
        caption = (f"{Path(row.path).name}<br>{html.escape(str(row.model))}: fake_score "
                   f"{row.fake_score:.3f}" + (f" · true {html.escape(str(group))}" if group
                                              else ""))
        cards.append(f'<figure style="display:inline-block;margin:6px;vertical-align:top">'
                     f'<img src="data:image/png;base64,{data}" alt="heatmap">'
                     f'<figcaption class="caption">{caption}</figcaption></figure>')
    return ["<h2>Heatmaps</h2>",
            '<p class="caption">The highest-scored images of each class: where the model found '
            "evidence of a fake (Grad-CAM; bright = raised the score), over the scored crop "
            "(white) with the face box (green). For real images these are the likeliest false "
            "alarms. A heatmap is a coarse hint of what the model looked at, not proof.</p>",
            "<div>" + "".join(cards) + "</div>"]


def write_report(evaluation: Evaluated, folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Write everything an evaluation found to ``folder`` (created if needed).

    Files (see :data:`FILE_NAMES`): per_image.csv (scores, true labels and operating points of
    every image; ``deepfake-toolkit evaluate --from-csv`` rebuilds the report from it alone),
    metrics.csv, metrics.json (metrics, robustness, confounds, reliability, operating points,
    notes and settings), robustness.csv (with perturbations), confounds.csv, reliability.csv,
    operating_points.json (for ``--operating-points`` on another folder) and report.html.

    Returns:
        Kind -> path written.
    """
    from . import __version__

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    evaluation.settings.setdefault("created",
                                   datetime.now(timezone.utc).isoformat(timespec="seconds"))
    paths = {kind: folder / name for kind, name in FILE_NAMES.items()}
    written = {"per_image": write_per_image(evaluation.per_image, paths["per_image"]),
               "metrics_csv": write_csv(evaluation.metrics, paths["metrics_csv"])}
    if not evaluation.robustness.empty:
        written["robustness"] = write_csv(evaluation.robustness, paths["robustness"])
    written["confounds"] = write_csv(evaluation.confounds, paths["confounds"])
    written["reliability"] = write_csv(evaluation.reliability, paths["reliability"])
    written["operating_points"] = save_operating_points(evaluation.operating_points,
                                                        paths["operating_points"])
    document = {
        "deepfake_toolkit_version": __version__,
        "settings": evaluation.settings,
        "models": evaluation.models,
        "operating_points": {name: point.to_dict()
                             for name, point in evaluation.operating_points.items()},
        "metrics": _records(evaluation.metrics),
        "robustness": _records(evaluation.robustness),
        "confounds": _records(evaluation.confounds),
        "reliability": _records(evaluation.reliability),
        "warnings": evaluation.warnings,
        "notes": evaluation.notes,
    }
    paths["metrics_json"].write_text(json.dumps(document, indent=2, default=str) + "\n",
                                     encoding="utf-8")
    written["metrics_json"] = paths["metrics_json"]
    paths["report"].write_text(report_html(evaluation), encoding="utf-8")
    written["report"] = paths["report"]
    return written
