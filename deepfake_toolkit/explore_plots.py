"""Interactive figures of classification results for notebooks (plotly).

Labels are "known" when an image lies in a folder named ``real`` or ``fake`` (see
:func:`deepfake_toolkit.labels.known_label`; the sample folder that
:func:`deepfake_toolkit.samples.write_samples` writes is one): figures then colour scores by
the known label, so a user sees at a glance where a model separates the two.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd

from .labels import with_known_labels

LABEL_COLOURS: dict[str, str] = {"real": "#2c7fb8", "fake": "#d95f0e", "unknown": "#7f7f7f",
                                 "all": "#4c72b0"}
"""Colours of the known labels in every figure ("all" when no label is known)."""


def score_histogram(table: pd.DataFrame, bins: int = 20, widget: bool = False,
                    title: str = "fake_score per model"):
    """Histogram of fake_score, one panel per model, coloured by known label when there is one.

    Args:
        table: A result table (see :data:`deepfake_toolkit.results.COLUMNS`); a
            ``known_label`` column is added from the folder names when missing.
        bins: Number of equal bins over [0, 1].
        widget: Return a :class:`plotly.graph_objects.FigureWidget` (live, selectable in a
            notebook; needs anywidget) instead of a static :class:`plotly.graph_objects.Figure`.
        title: Figure title.

    Returns:
        The figure. Drag-selecting a range in a FigureWidget reports it through the traces'
        ``on_selection`` callbacks (see :class:`deepfake_toolkit.widgets.Explorer`).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if "known_label" not in table:
        table = with_known_labels(table)
    scored = table[table["fake_score"].notna()]
    models = list(dict.fromkeys(table["model"])) or ["(no results)"]
    figure = make_subplots(rows=len(models), cols=1, shared_xaxes=True,
                           subplot_titles=models, vertical_spacing=0.12 / max(1, len(models)))
    groups = _label_groups(scored["known_label"])
    for row, model in enumerate(models, start=1):
        of_model = scored[scored["model"] == model]
        for group in groups:
            values = of_model["fake_score"] if group == "all" else \
                of_model.loc[of_model["known_label"].replace("", "unknown") == group,
                             "fake_score"]
            figure.add_trace(go.Histogram(
                x=values.to_numpy(), name=group, legendgroup=group, showlegend=row == 1,
                marker_color=LABEL_COLOURS.get(group, LABEL_COLOURS["unknown"]),
                xbins=dict(start=0.0, end=1.0, size=1.0 / bins), opacity=0.75,
                customdata=of_model.loc[values.index, "path"].to_numpy(),
                hovertemplate="fake_score %{x}<br>%{y} images<extra>" + group + "</extra>",
                meta={"model": model}), row=row, col=1)
        figure.update_yaxes(title_text="images", row=row, col=1)
    figure.update_xaxes(range=[0, 1], title_text="fake_score = P(fake)", row=len(models), col=1)
    figure.update_layout(barmode="overlay", title=title, dragmode="select", height=220 +
                         180 * len(models), legend_title_text="known label" if
                         groups != ["all"] else "", margin=dict(l=60, r=20, t=70, b=50))
    return go.FigureWidget(figure) if widget else figure


def _label_groups(known: Iterable[str]) -> list[str]:
    present = {label or "unknown" for label in known}
    if present <= {"unknown"}:
        return ["all"]
    return [label for label in ("real", "fake", "unknown") if label in present]
