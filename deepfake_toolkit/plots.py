"""Plotly figures for evaluations and the explorer: ROC and PR curves, the score histogram,
reliability diagrams, confusion matrices, per-subset metrics and robustness heatmaps.

Every function takes a pandas DataFrame and returns a ``plotly.graph_objects.Figure``, so the same
figures serve the HTML report, notebooks and anything else. Curves and histograms take a table of
scores with a true-label column ("real"/"fake", or 0/1 with 1 = fake) and one curve per value of
a group column (by default ``model``); the other functions take the tables of
:mod:`deepfake_toolkit.evaluate`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

LABEL_COLOURS: dict[str, str] = {"real": "#1f77b4", "fake": "#d62728", "unknown": "#7f7f7f",
                                 "all": "#4c72b0"}
"""Colours of the labels (true, or known from folder names) in every figure and the explorer;
"all" when no label is known."""
PALETTE = qualitative.Plotly
"""Colours of the groups (models), in order."""
_LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50))


def _is_fake(labels: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(labels):
        return labels.to_numpy() == 1
    return labels.astype(str).str.lower().to_numpy() == "fake"


def _groups(frame: pd.DataFrame, group_column: str | None) -> list[tuple[str, pd.DataFrame]]:
    if group_column is None or group_column not in frame:
        return [("all", frame)]
    return [(str(name), rows) for name, rows in frame.groupby(group_column, sort=False)]


def _scored(rows: pd.DataFrame, score_column: str, label_column: str
            ) -> tuple[np.ndarray, np.ndarray]:
    keep = rows[score_column].notna()
    return _is_fake(rows.loc[keep, label_column]), rows.loc[keep, score_column].to_numpy(float)


def roc_figure(frame: pd.DataFrame, *, score_column: str = "fake_score",
               label_column: str = "true_label", group_column: str | None = "model",
               log_fpr: bool = False, title: str = "ROC curves (fake = positive)") -> go.Figure:
    """ROC curve per group, with its AUC in the legend.

    Args:
        frame: One row per scored image (and group).
        score_column: Scores, higher = more likely fake.
        label_column: True labels ("real"/"fake" or 0/1).
        group_column: One curve per value (e.g. model); None for a single curve.
        log_fpr: Logarithmic false-positive axis, to read the low-FPR end where investigators
            operate.
        title: Figure title.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = go.Figure()
    for i, (name, rows) in enumerate(_groups(frame, group_column)):
        y_true, scores = _scored(rows, score_column, label_column)
        if y_true.all() or not y_true.any():
            continue
        fpr, tpr, thresholds = roc_curve(y_true, scores)
        auc = roc_auc_score(y_true, scores)
        figure.add_trace(go.Scatter(
            x=fpr, y=tpr, mode="lines", name=f"{name} (AUC {auc:.3f})",
            line=dict(color=PALETTE[i % len(PALETTE)], width=2),
            customdata=np.minimum(thresholds, 1.0),
            hovertemplate="FPR %{x:.3f}<br>TPR %{y:.3f}<br>threshold %{customdata:.3f}"
                          "<extra></extra>"))
    if not log_fpr:
        figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance",
                                    line=dict(color="grey", dash="dash", width=1)))
    figure.update_layout(title=title, xaxis_title="false-positive rate (reals called fake)",
                         yaxis_title="true-positive rate (fakes caught)", **_LAYOUT)
    figure.update_yaxes(range=[0, 1.02])
    if log_fpr:
        figure.update_xaxes(type="log")
    else:
        figure.update_xaxes(range=[0, 1])
    return figure


def pr_figure(frame: pd.DataFrame, *, score_column: str = "fake_score",
              label_column: str = "true_label", group_column: str | None = "model",
              title: str = "Precision-recall curves (fake = positive)") -> go.Figure:
    """Precision-recall curve per group, with its average precision in the legend and the share
    of fakes (a guessing detector's precision) as a dotted line."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure = go.Figure()
    prevalence = math.nan
    for i, (name, rows) in enumerate(_groups(frame, group_column)):
        y_true, scores = _scored(rows, score_column, label_column)
        if y_true.all() or not y_true.any():
            continue
        precision, recall, _ = precision_recall_curve(y_true, scores)
        ap = average_precision_score(y_true, scores)
        prevalence = float(y_true.mean())
        figure.add_trace(go.Scatter(
            x=recall, y=precision, mode="lines", name=f"{name} (AP {ap:.3f})",
            line=dict(color=PALETTE[i % len(PALETTE)], width=2, shape="hv"),
            hovertemplate="recall %{x:.3f}<br>precision %{y:.3f}<extra></extra>"))
    if not math.isnan(prevalence):
        figure.add_hline(y=prevalence, line=dict(color="grey", dash="dot", width=1),
                         annotation_text=f"share of fakes {prevalence:.2f}")
    figure.update_layout(title=title, xaxis_title="recall (fakes caught)",
                         yaxis_title="precision (verdicts 'fake' that are fake)", **_LAYOUT)
    figure.update_xaxes(range=[0, 1])
    figure.update_yaxes(range=[0, 1.02])
    return figure


def score_histogram(frame: pd.DataFrame, *, score_column: str = "fake_score",
                    label_column: str = "true_label", group_column: str | None = "model",
                    threshold_column: str | None = "threshold", bins: int = 20,
                    normalise: bool = False, widget: bool = False,
                    title: str = "Scores per model") -> go.Figure:
    """Histogram of scores, one panel per group (model), coloured by the images' labels.

    The one score histogram of the toolkit: the evaluation report (true labels, each class
    normalised, the threshold marked) and the explorer (labels known from folder names, a live
    widget whose drag-selection picks a score range) both draw it.

    Args:
        frame: One row per scored image (and group); rows without a score are left out.
        score_column: Scores in [0, 1], higher = more likely fake.
        label_column: Labels ("real"/"fake", or 0/1 with 1 = fake; anything else, or a missing
            column, counts as unknown). With no label known, one "all" trace per panel.
        group_column: One panel per value (e.g. model); None for one panel.
        threshold_column: A dashed line at each group's first value of this column, when the
            table has it.
        bins: Number of equal bins over [0, 1].
        normalise: Show each label's share of its images (%) instead of counts.
        widget: Return a :class:`plotly.graph_objects.FigureWidget` (live and selectable in a
            notebook; needs anywidget) instead of a static figure.
        title: Figure title.

    Returns:
        The figure. Each trace carries the image paths (``customdata``, when the table has a
        ``path`` column) and its group (``meta["model"]``), so a selection can be traced back to
        the images (see :class:`deepfake_toolkit.widgets.Explorer`).
    """
    labels = _label_names(frame[label_column]) if label_column in frame else "unknown"
    frame = frame.assign(_shown_label=labels)
    groups = _groups(frame, group_column) or [("(no results)", frame)]
    present = [name for name in ("real", "fake", "unknown")
               if (frame["_shown_label"] == name).any()]
    shown = ["all"] if set(present) <= {"unknown"} else present
    figure = make_subplots(rows=len(groups), cols=1, shared_xaxes=True,
                           subplot_titles=[name for name, _ in groups],
                           vertical_spacing=0.12 / len(groups))
    for row, (name, rows) in enumerate(groups, start=1):
        scored = rows[rows[score_column].notna()]
        for label in shown:
            chosen = scored if label == "all" else scored[scored["_shown_label"] == label]
            figure.add_trace(go.Histogram(
                x=chosen[score_column].to_numpy(float), name=label, legendgroup=label,
                showlegend=row == 1, marker_color=LABEL_COLOURS[label], opacity=0.7,
                histnorm="percent" if normalise else None,
                xbins=dict(start=0.0, end=1.0, size=1.0 / bins),
                customdata=chosen["path"].to_numpy() if "path" in chosen else None,
                hovertemplate=f"{score_column} %{{x}}<br>%{{y}}"
                              f"{'% of the class' if normalise else ' images'}"
                              f"<extra>{label}</extra>",
                meta={"model": name}), row=row, col=1)
        if threshold_column and threshold_column in rows and rows[threshold_column].notna().any():
            figure.add_vline(x=float(rows[threshold_column].dropna().iloc[0]), row=row, col=1,
                             line=dict(color="black", dash="dash", width=1))
        figure.update_yaxes(title_text="% of the class" if normalise else "images", row=row,
                            col=1)
    figure.update_xaxes(range=[0, 1])
    figure.update_xaxes(title_text="fake_score = P(fake)", row=len(groups), col=1)
    figure.update_layout(title=title, barmode="overlay", dragmode="select",
                         height=220 + 180 * len(groups),
                         legend_title_text="" if shown == ["all"] else "label", **_LAYOUT)
    return go.FigureWidget(figure) if widget else figure


def _label_names(labels: pd.Series) -> pd.Series:
    """"real", "fake" or "unknown" for each label ("real"/"fake" in any case, or 0/1)."""
    def name(value: object) -> str:
        text = str(value).strip().lower()
        if text in ("real", "0", "0.0"):
            return "real"
        if text in ("fake", "1", "1.0"):
            return "fake"
        return "unknown"

    return labels.map(name)


def reliability_figure(reliability: pd.DataFrame, *, group_column: str | None = "model",
                       title: str = "Reliability diagram") -> go.Figure:
    """Fraction of fakes against mean score per bin; on the diagonal a score means what it says.

    Args:
        reliability: Columns mean_score, fraction_fake, count (and the group column), as from
            :func:`deepfake_toolkit.evaluate.reliability_table`.
        group_column: One line per value; None for one line.
        title: Figure title.
    """
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                                line=dict(color="grey", dash="dash", width=1)))
    largest = max(1, int(reliability["count"].max())) if len(reliability) else 1
    for i, (name, rows) in enumerate(_groups(reliability, group_column)):
        filled = rows[rows["count"] > 0]
        figure.add_trace(go.Scatter(
            x=filled["mean_score"], y=filled["fraction_fake"], mode="lines+markers", name=name,
            line=dict(color=PALETTE[i % len(PALETTE)]),
            marker=dict(size=6 + 14 * np.sqrt(filled["count"] / largest)),
            customdata=filled["count"],
            hovertemplate="mean score %{x:.3f}<br>fraction fake %{y:.3f}<br>%{customdata} images"
                          "<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="mean fake score in the bin",
                         yaxis_title="fraction of fakes in the bin", **_LAYOUT)
    figure.update_xaxes(range=[0, 1])
    figure.update_yaxes(range=[0, 1.02])
    return figure


def confusion_figure(metrics: pd.DataFrame, *, group_column: str | None = "model",
                     title: str = "Confusion matrices at each model's threshold") -> go.Figure:
    """One confusion matrix per row of ``metrics`` (columns tn, fp, fn, tp), coloured by the
    share of the true class; cells show counts and that share."""
    groups = [(str(row[group_column]) if group_column and group_column in metrics else "all", row)
              for _, row in metrics.iterrows()]
    figure = make_subplots(rows=1, cols=max(1, len(groups)),
                           subplot_titles=[name for name, _ in groups] or None)
    for column, (_, row) in enumerate(groups, start=1):
        counts = np.array([[row["tn"], row["fp"]], [row["fn"], row["tp"]]], dtype=float)
        totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(totals > 0, counts / totals, np.nan)
        text = [[f"{int(c)}<br>{s:.0%}" if not math.isnan(s) else f"{int(c)}"
                 for c, s in zip(count_row, share_row)]
                for count_row, share_row in zip(counts, shares)]
        figure.add_trace(go.Heatmap(
            z=shares, x=["called real", "called fake"], y=["real", "fake"], text=text,
            texttemplate="%{text}", zmin=0, zmax=1, colorscale="Blues",
            showscale=column == 1, hoverinfo="skip"), row=1, col=column)
        figure.update_yaxes(autorange="reversed", row=1, col=column)
    figure.update_layout(title=title, **_LAYOUT)
    return figure


def subset_figure(metrics: pd.DataFrame, *, metric: str = "auc",
                  group_column: str = "model", title: str | None = None) -> go.Figure:
    """A metric per subset (e.g. per generator) and group, with its 95% interval when the table
    has ``<metric>_low`` / ``<metric>_high`` columns."""
    figure = go.Figure()
    for i, (name, rows) in enumerate(_groups(metrics, group_column)):
        error = None
        if f"{metric}_low" in rows and f"{metric}_high" in rows:
            error = dict(type="data", symmetric=False,
                         array=(rows[f"{metric}_high"] - rows[metric]).to_numpy(float),
                         arrayminus=(rows[metric] - rows[f"{metric}_low"]).to_numpy(float))
        figure.add_trace(go.Bar(x=rows["subset"], y=rows[metric], name=name, error_y=error,
                                marker_color=PALETTE[i % len(PALETTE)]))
    figure.update_layout(title=title or f"{metric} per subset", barmode="group",
                         yaxis_title=metric, **_LAYOUT)
    return figure


def robustness_figure(robustness: pd.DataFrame, *, value: str = "auc",
                      group_column: str = "model",
                      title: str | None = None) -> go.Figure:
    """Heatmap of ``value`` per group (rows) and perturbation (columns, in table order)."""
    grid = robustness.pivot(index=group_column, columns="perturbation", values=value)
    grid = grid[list(dict.fromkeys(robustness["perturbation"]))]
    grid = grid.loc[list(dict.fromkeys(robustness[group_column]))]
    figure = go.Figure(go.Heatmap(
        z=grid.to_numpy(float), x=list(grid.columns), y=list(grid.index),
        text=[[("-" if math.isnan(v) else f"{v:.3f}") for v in row] for row in grid.to_numpy()],
        texttemplate="%{text}", colorscale="RdYlGn", zmin=0.5 if value == "auc" else None,
        zmax=1.0 if value == "auc" else None, colorbar=dict(title=value)))
    figure.update_layout(title=title or f"Robustness: {value} per perturbation (both classes "
                                        "perturbed alike)", **_LAYOUT)
    figure.update_yaxes(autorange="reversed")
    return figure
