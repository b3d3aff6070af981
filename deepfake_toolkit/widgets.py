"""The explorer: a notebook UI to classify a folder and look through the results.

A notebook only needs::

    from deepfake_toolkit.widgets import Explorer
    Explorer("path/to/images")

Everything the UI does goes through the package's public functions
(:func:`~deepfake_toolkit.pipeline.classify_files`, :func:`~deepfake_toolkit.results.write_csv`),
so what the explorer shows is what the CLI would write. A classification runs in a background
thread, so the notebook stays responsive and the Stop button works.
"""

from __future__ import annotations

import html
import io
import math
import os
import threading
import traceback
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import pandas as pd
from PIL import Image, ImageDraw

from .faces import NO_FACE_POLICIES, FaceCropConfig, crop_window
from .images import ImageReadError, find_images, load_image, printable_path
from .labels import with_known_labels
from .models import Detector, list_models, load_model, weights_available
from .evidence import EVIDENCE_CAVEAT, MANIFEST_STATUSES
from .pipeline import classify_files
from .plots import LABEL_COLOURS, score_histogram
from .results import results_frame, text_series, write_csv
from .scoring import Scoring
from .stability import relabel

THUMBNAIL_SIDE = 200
"""Longest side, in pixels, of a gallery image."""
FACE_SIDE = 96
"""Side, in pixels, of a gallery face crop."""
TABLE_COLUMNS = ("file", "known_label", "model", "fake_score", "label", "region", "n_faces",
                 "face_prob", "c2pa_status", "provenance_says_ai", "generator",
                 "stability_spread", "error")
"""Columns shown in the results table (the CSV export has the full schema)."""
ALL = "(all)"
PROVENANCE_FILTERS = {
    "metadata says generated": lambda t: t["provenance_says_ai"].fillna(False).astype(bool),
    "has a C2PA manifest": lambda t: t["c2pa_status"].isin(MANIFEST_STATUSES),
    "C2PA invalid": lambda t: t["c2pa_status"] == "invalid",
    "camera EXIF": lambda t: t["exif_make"] != "",
    "no provenance metadata": lambda t: (
        ~t["c2pa_status"].isin(MANIFEST_STATUSES) & (t["exif_make"] == "")
        & (t["xmp_source_type"] == "") & (t["generator"] == "")),
}
"""The explorer's provenance filter: name -> row mask of a result table."""
STABILITY_FILTERS = {
    "verdict flipped": lambda t: t["stability_reason"] != "",
    "stable": lambda t: t["stability_spread"].notna() & (t["stability_reason"] == ""),
}
"""The explorer's stability filter: name -> row mask of a result table."""


def _slider_start(scoring: Scoring) -> float:
    """Where the threshold slider starts for a model: its operating threshold, or 0.5 for a
    model without one (it labels by the five bands until the slider is moved)."""
    return 0.5 if scoring.threshold is None else scoring.threshold


def model_options(weights_dir: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(caption, name) pairs for every registered model, saying whether its weights are present."""
    options = []
    for name in list_models():
        present = weights_available(name, weights_dir)
        options.append((f"{name} ({'weights present' if present else 'no weights'})", name))
    return options


def _existing_folder(folder: Path) -> Path:
    """``folder``, or its nearest existing parent (a chooser can only open existing folders)."""
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            return candidate
    return Path.cwd()


def _folder_chooser(folder: Path):
    """An ipyfilechooser folder chooser, or a plain path box when ipyfilechooser is missing."""
    try:
        from ipyfilechooser import FileChooser
    except ImportError:
        return widgets.Text(value=str(folder), description="Folder",
                            placeholder="path of a folder of images",
                            layout=widgets.Layout(width="60%"))
    return FileChooser(str(_existing_folder(folder)), show_only_dirs=True, select_default=True,
                       title="<b>Folder of images</b>")


def annotated_thumbnail(image: Image.Image, box: tuple[float, ...] | None,
                        side: int = THUMBNAIL_SIDE) -> bytes:
    """PNG bytes of a thumbnail of ``image`` with the face ``box`` drawn on it (when given)."""
    scale = side / max(image.size)
    thumbnail = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.BILINEAR)
    if box is not None:
        x1, y1, x2, y2 = (value * scale for value in box)
        ImageDraw.Draw(thumbnail).rectangle((x1, y1, x2, y2), outline=(255, 220, 0), width=3)
    return _png(thumbnail)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _is_box(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and len(value) == 4


def provenance_lines(row: pd.Series) -> list[str]:
    """HTML lines saying what a result row's provenance columns found (nothing when empty)."""
    lines = []
    status = row.get("c2pa_status", "")
    if status in MANIFEST_STATUSES:
        detail = ", ".join(html.escape(str(row[c])) for c in ("c2pa_signer", "c2pa_source_type")
                           if row.get(c))
        lines.append(f"C2PA {html.escape(status)}" + (f": {detail}" if detail else ""))
    if row.get("generator"):
        model = f" ({html.escape(row['generator_model'])})" if row.get("generator_model") else ""
        lines.append(f"generator: {html.escape(row['generator'])}{model}")
    if row.get("xmp_source_type"):
        lines.append(f"XMP source type: {html.escape(row['xmp_source_type'])}")
    camera = " ".join(str(row[c]) for c in ("exif_make", "exif_model") if row.get(c))
    if camera:
        lines.append(f"camera: {html.escape(camera)}")
    if row.get("exif_software"):
        lines.append(f"software: {html.escape(row['exif_software'])}")
    says_ai = row.get("provenance_says_ai")
    if says_ai is True or (says_ai is not None and not pd.isna(says_ai) and bool(says_ai)):
        lines.append("<b style='color:#b00020'>metadata says generated</b>")
    return lines


class Explorer(widgets.VBox):
    """Classify a folder and inspect the results: table, gallery with face boxes, histogram.

    Args:
        folder: Folder shown in the folder chooser at start (default: the current folder).
        models: Models selected at start (default: "default").
        face_crop: Start with face cropping on (True) or off (False); None: as the first selected
            model's own policy (``detector.scoring``) says.
        no_face: Start with this no-face policy ("whole" or "skip"); None: the model's own.
        threshold: A threshold of your own to start with: "fake" when fake_score >= threshold.
            None (default) starts the slider at the first selected model's operating threshold
            and labels each model by its own rule ("model default"); moving the slider makes it
            your threshold for every model, which is what the results record, and "Reset to
            model default" goes back. The slider relabels the results at once, without running
            again.
        batch_size: Images per batch (also how often the progress bar moves).
        num_workers: Decoding processes; 0 (default) decodes in the background thread, which is
            safest inside a notebook kernel.
        weights_dir: Folder searched first for weight files.
        device: "auto", "cpu" or "cuda".
        gallery_size: Most images shown in the gallery at once.
        stability: Start with the stability check on (each image is also scored re-encoded as
            JPEG 90 and 75 and downscaled to 0.75: 4x the work).

    Attributes:
        results: The last run's table (result schema plus ``known_label``), relabelled with the
            current threshold; empty before a run.
        figure: The plotly FigureWidget histogram (replaced after each run).
        gallery: The box of gallery cards, one per shown image.
        error: Message of the last failed run, else "".
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        models: tuple[str, ...] | list[str] = ("default",),
        face_crop: bool | None = None,
        no_face: str | None = None,
        threshold: float | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        weights_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        gallery_size: int = 24,
        stability: bool = False,
    ) -> None:
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.weights_dir = weights_dir
        self.device = device
        self.gallery_size = gallery_size
        self.results = with_known_labels(results_frame([]))
        self._detectors: dict[tuple[str, str, str], Detector] = {}
        self._cropper: Any = None
        self.error = ""
        self._root: Path | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._updating_filters = False
        self._setting_slider = False

        self.folder_chooser = _folder_chooser(Path(folder or Path.cwd()).expanduser())
        options = model_options(weights_dir)
        names = [name for _, name in options]
        self.model_select = widgets.SelectMultiple(
            options=options, value=tuple(m for m in models if m in names),
            description="Models", rows=min(6, max(2, len(options))),
            layout=widgets.Layout(width="420px"), style={"description_width": "initial"})
        own = self.model_scoring()
        face_crop = own.face_crop if face_crop is None else face_crop
        self.face_crop_box = widgets.Checkbox(value=face_crop, description="Score face crops",
                                              indent=False)
        self.no_face_select = widgets.Dropdown(
            options=[("score the whole image", "whole"), ("skip the image", "skip")],
            value=no_face if no_face in NO_FACE_POLICIES else own.no_face,
            description="No face found:", style={"description_width": "initial"},
            disabled=not face_crop)
        self.stability_box = widgets.Checkbox(
            value=stability, description="Stability check (4x the work)", indent=False)
        self.user_threshold = threshold is not None
        self.threshold_slider = widgets.FloatSlider(
            value=_slider_start(own) if threshold is None else threshold, min=0.0, max=1.0,
            step=0.001, description="Fake if score ≥", readout_format=".3f",
            continuous_update=False, style={"description_width": "initial"})
        self.threshold_note = widgets.HTML()
        self.reset_threshold_button = widgets.Button(description="Reset to model default",
                                                     icon="undo",
                                                     layout=widgets.Layout(width="auto"))
        self.run_button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", button_style="warning", icon="stop",
                                          disabled=True)
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="Progress",
                                            layout=widgets.Layout(width="360px"))
        self.status = widgets.HTML(value="Choose a folder and press Run.")

        self.label_filter = widgets.Dropdown(options=[ALL], value=ALL, description="Verdict")
        self.known_filter = widgets.Dropdown(options=[ALL], value=ALL, description="Known label")
        self.provenance_filter = widgets.Dropdown(
            options=[ALL, *PROVENANCE_FILTERS], value=ALL, description="Provenance")
        self.stability_filter = widgets.Dropdown(
            options=[ALL, *STABILITY_FILTERS], value=ALL, description="Stability")
        self.sort_select = widgets.Dropdown(
            options=["fake_score", "file", "model", "label", "known_label", "face_prob",
                     "stability_spread"],
            value="fake_score", description="Sort by")
        self.descending_box = widgets.Checkbox(value=True, description="descending",
                                               indent=False)
        self.score_range = widgets.FloatRangeSlider(
            value=(0.0, 1.0), min=0.0, max=1.0, step=0.01, description="Score range",
            readout_format=".2f", continuous_update=False,
            layout=widgets.Layout(width="420px"))
        self.table = widgets.HTML(layout=widgets.Layout(max_height="360px", overflow="auto"))
        self.gallery = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="row wrap"))
        self.gallery_caption = widgets.HTML()
        self.figure = score_histogram(self.results, label_column="known_label", widget=True)
        self.figure_box = widgets.VBox([self.figure])
        self.csv_path = widgets.Text(value=str(Path.cwd() / "deepfake_scores.csv"),
                                     description="CSV file", layout=widgets.Layout(width="60%"))
        self.export_button = widgets.Button(description="Save CSV", icon="download",
                                            disabled=True)

        self.face_crop_box.observe(self._on_face_crop, names="value")
        self.run_button.on_click(lambda _: self.run())
        self.stop_button.on_click(lambda _: self.stop())
        self.export_button.on_click(lambda _: self.export_csv())
        self.threshold_slider.observe(self._on_threshold, names="value")
        self.reset_threshold_button.on_click(lambda _: self.reset_threshold())
        self.model_select.observe(self._on_models, names="value")
        self._show_threshold_note()
        for control in (self.label_filter, self.known_filter, self.provenance_filter,
                        self.stability_filter, self.sort_select, self.descending_box,
                        self.score_range):
            control.observe(self._on_view_control, names="value")

        settings = widgets.VBox([
            self.folder_chooser,
            widgets.HBox([self.model_select,
                          widgets.VBox([self.face_crop_box, self.no_face_select,
                                        self.stability_box, self.threshold_slider,
                                        widgets.HBox([self.threshold_note,
                                                      self.reset_threshold_button])])]),
            widgets.HBox([self.run_button, self.stop_button, self.progress]),
            self.status,
        ])
        views = widgets.Tab(children=[
            widgets.VBox([widgets.HBox([self.label_filter, self.known_filter]),
                          widgets.HBox([self.provenance_filter, self.stability_filter]),
                          widgets.HBox([self.sort_select, self.descending_box]), self.table,
                          widgets.HTML(f"<small>{html.escape(EVIDENCE_CAVEAT)}</small>")]),
            widgets.VBox([self.score_range, self.gallery_caption, self.gallery]),
            widgets.VBox([widgets.HTML("Drag across the histogram to pick a score range: the "
                                       "gallery then shows those images."), self.figure_box]),
            widgets.HBox([self.csv_path, self.export_button]),
        ])
        for index, title in enumerate(("Table", "Gallery", "Histogram", "Export")):
            views.set_title(index, title)
        self.views = views
        super().__init__([settings, views])
        self.add_class("deepfake-toolkit-explorer")

    # -- settings -------------------------------------------------------------------------

    @property
    def folder(self) -> Path | None:
        """The folder chosen in the chooser or typed into the path box, or None."""
        chooser = self.folder_chooser
        if isinstance(chooser, widgets.Text):
            return Path(chooser.value).expanduser() if chooser.value.strip() else None
        chosen = chooser.selected or chooser.selected_path
        return Path(chosen).expanduser() if chosen else None

    def set_folder(self, folder: str | os.PathLike[str]) -> None:
        """Point the folder chooser (or path box) at ``folder``."""
        folder = Path(folder).expanduser()
        if isinstance(self.folder_chooser, widgets.Text):
            self.folder_chooser.value = str(folder)
        elif folder.is_dir():
            self.folder_chooser.reset(path=str(folder.resolve()), filename="")
        else:
            self._show_status(f"{html.escape(str(folder))} is not a folder: choose a folder of "
                              "images.", error=True)

    def _on_face_crop(self, change: dict) -> None:
        self.no_face_select.disabled = not change["new"]

    def model_scoring(self) -> Scoring:
        """The scoring policy of the first selected model (``detector.scoring``), or the
        defaults when none is selected or its weights cannot be loaded."""
        models = list(self.model_select.value)
        if not models:
            return Scoring()
        try:
            return self._detector(models[0]).scoring
        except Exception:  # noqa: BLE001 - a model that cannot load is reported when run
            return Scoring()

    def reset_threshold(self) -> None:
        """Label each model by its own rule again, the slider at the first model's operating
        threshold (what "Reset to model default" does)."""
        self.user_threshold = False
        self._move_slider(_slider_start(self.model_scoring()))
        self._show_threshold_note()
        self._relabel()

    def _move_slider(self, value: float) -> None:
        """Set the slider without making its value the user's threshold."""
        self._setting_slider = True
        try:
            self.threshold_slider.value = value
        finally:
            self._setting_slider = False

    def _on_threshold(self, _: dict) -> None:
        if self._setting_slider:
            return
        self.user_threshold = True
        self._show_threshold_note()
        self._relabel()

    def _on_models(self, _: dict) -> None:
        if not self.user_threshold:
            self.reset_threshold()

    def _show_threshold_note(self) -> None:
        own = self.model_scoring()
        default = "the five score bands" if own.threshold is None else f"{own.threshold:.4g}"
        if self.user_threshold:
            self.threshold_note.value = (f"<small>your threshold, for every model (model "
                                         f"default: {default})</small>")
        else:
            self.threshold_note.value = f"<small>model default: {default}</small>"
        self.reset_threshold_button.disabled = not self.user_threshold

    # -- running --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether a classification is in progress."""
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        """Start classifying the chosen folder in a background thread (what Run does)."""
        if self.running:
            return
        problem, files = self._check_settings()
        if problem:
            self._show_status(problem, error=True)
            return
        self._stop.clear()
        self.error = ""
        self.results = with_known_labels(results_frame([]))
        self._root = self.folder
        self.progress.max, self.progress.value = max(1, len(files)), 0
        self.run_button.disabled, self.stop_button.disabled = True, False
        self.export_button.disabled = True
        models = list(self.model_select.value)
        self._show_status(f"Classifying {len(files)} images with {', '.join(models)} …")
        self._thread = threading.Thread(target=self._classify, args=(files, models),
                                        name="deepfake-toolkit-explorer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the running classification to stop after the current batch (what Stop does)."""
        if self.running:
            self._stop.set()
            self.stop_button.disabled = True
            self._show_status("Stopping after the current batch …")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running classification ends; returns False on timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _check_settings(self) -> tuple[str, list[Path]]:
        folder = self.folder
        if folder is None:
            return "Choose a folder first.", []
        if not folder.is_dir():
            return f"{html.escape(str(folder))} is not a folder: choose a folder of images.", []
        models = list(self.model_select.value)
        if not models:
            return "Select at least one model.", []
        missing = [m for m in models if not weights_available(m, self.weights_dir)]
        if missing:
            return (f"No weights for {', '.join(missing)}: run <code>deepfake-toolkit models"
                    "</code> to see where to put them, or choose another model."), []
        files = find_images(folder)
        if not files:
            return f"No image files found in {html.escape(str(folder))}.", []
        return "", files

    def _classify(self, files: list[Path], models: list[str]) -> None:
        batches: list[pd.DataFrame] = []

        def on_batch(rows: pd.DataFrame) -> None:
            batches.append(rows)
            self.progress.value = min(self.progress.max,
                                      self.progress.value + len(rows) // max(1, len(models)))

        try:
            detectors = [self._detector(model) for model in models]
            frame = classify_files(
                files, model=detectors, face_crop=self.face_crop_box.value,
                no_face=self.no_face_select.value,
                threshold=self.threshold_slider.value if self.user_threshold else None,
                batch_size=self.batch_size, num_workers=self.num_workers,
                weights_dir=self.weights_dir, device=self.device, progress=False,
                stop=self._stop, on_batch=on_batch, stability=self.stability_box.value)
        except Exception as exc:  # noqa: BLE001 - shown in the UI instead of a lost traceback
            self.error = f"{type(exc).__name__}: {exc}"
            self._show_status(f"The run failed: {html.escape(self.error)}", error=True)
            traceback.print_exc()
            self._finish()
            return
        with self._lock:
            self.results = with_known_labels(frame, self._root)
        stopped = frame.attrs.get("stopped", False)
        done = len(frame) // max(1, len(models))
        rate = frame.attrs.get("images_per_second", math.nan)
        self._finish()
        self._show_status(f"{'Stopped' if stopped else 'Done'}: {done} of {len(files)} images "
                          f"scored ({rate:.1f} images/s).")
        self._relabel()

    def _finish(self) -> None:
        self.run_button.disabled, self.stop_button.disabled = False, True
        self.export_button.disabled = self.results.empty

    def _show_status(self, message: str, error: bool = False) -> None:
        colour = "#b00020" if error else "inherit"
        self.status.value = f"<span style='color:{colour}'>{message}</span>"

    # -- views ----------------------------------------------------------------------------

    def _relabel(self) -> None:
        """Relabel the scored rows (with the slider's threshold when it is the user's, else
        each model by its own rule), then redraw everything."""
        with self._lock:
            if not self.results.empty:
                self.results = self._labelled(self.results)
        self._update_filters()
        self._refresh_views(new_figure=True)

    def _on_view_control(self, _: dict) -> None:
        if not self._updating_filters:
            self._refresh_views()

    def _update_filters(self) -> None:
        self._updating_filters = True
        try:
            self._set_filter_options()
        finally:
            self._updating_filters = False

    def _set_filter_options(self) -> None:
        for control, column in ((self.label_filter, "label"),
                                (self.known_filter, "known_label")):
            values = sorted(v for v in self.results[column].unique() if v)
            options = [ALL, *values]
            if list(control.options) != options:
                keep = control.value if control.value in options else ALL
                control.options = options
                control.value = keep

    def filtered(self) -> pd.DataFrame:
        """The results that pass the verdict and known-label filters and the score range,
        sorted as chosen."""
        with self._lock:
            table = self.results.copy()
        if table.empty:
            return table
        if self.label_filter.value != ALL:
            table = table[table["label"] == self.label_filter.value]
        if self.known_filter.value != ALL:
            table = table[table["known_label"] == self.known_filter.value]
        if self.provenance_filter.value != ALL:
            table = table[PROVENANCE_FILTERS[self.provenance_filter.value](table)]
        if self.stability_filter.value != ALL:
            table = table[STABILITY_FILTERS[self.stability_filter.value](table)]
        low, high = self.score_range.value
        if (low, high) != (0.0, 1.0):
            table = table[table["fake_score"].between(low, high)]
        table = table.assign(file=text_series((printable_path(Path(p).name)
                                               for p in table["path"]), table.index))
        return table.sort_values(self.sort_select.value, ascending=not self.descending_box.value,
                                 na_position="last", kind="stable")

    def _refresh_views(self, new_figure: bool = False) -> None:
        table = self.filtered()
        self._render_table(table)
        self._render_gallery(table)
        if new_figure:
            self._render_figure()

    def _render_table(self, table: pd.DataFrame) -> None:
        if table.empty:
            self.table.value = "<i>No results to show.</i>"
            return
        shown = table.loc[:, list(TABLE_COLUMNS)]
        self.table.value = shown.to_html(index=False, float_format=lambda v: f"{v:.3f}",
                                         na_rep="", classes="deepfake-results", border=0)

    def _render_gallery(self, table: pd.DataFrame) -> None:
        paths = list(dict.fromkeys(table["path"]))
        shown = paths[:self.gallery_size]
        self.gallery_caption.value = (f"Showing {len(shown)} of {len(paths)} images."
                                      if paths else "<i>No images to show.</i>")
        with self._lock:
            everything = self.results
        self.gallery.children = [self._card(path, everything[everything["path"] == path])
                                 for path in shown]

    def _card(self, path: str, rows: pd.DataFrame) -> widgets.Widget:
        boxes = [box for box in rows["face_box"] if _is_box(box)]
        box = tuple(boxes[0]) if boxes else None
        parts: list[widgets.Widget] = []
        try:
            image = load_image(path)
        except ImageReadError as exc:
            parts.append(widgets.HTML(f"<i>cannot show: {html.escape(str(exc))}</i>"))
        else:
            parts.append(widgets.Image(value=annotated_thumbnail(image, box), format="png"))
            if box is not None:
                crop = image.crop(crop_window(box, image.size, FaceCropConfig()))
                crop.thumbnail((FACE_SIDE, FACE_SIDE))
                parts.append(widgets.Image(value=_png(crop), format="png"))
        known = rows["known_label"].iloc[0] if len(rows) else ""
        lines = [f"<b>{html.escape(printable_path(Path(path).name))}</b>"]
        if known:
            lines.append(f"known: <span style='color:{LABEL_COLOURS[known]}'>{known}</span>")
        for _, row in rows.iterrows():
            score = "—" if pd.isna(row["fake_score"]) else f"{row['fake_score']:.3f}"
            lines.append(f"{html.escape(row['model'])}: {score} ({html.escape(row['label'])})")
            if not pd.isna(row["stability_spread"]):
                flipped = " — verdict flips" if row["stability_reason"] else ""
                lines.append(f"&nbsp;&nbsp;spread under re-encoding "
                             f"{row['stability_spread']:.3f}{flipped}")
        if len(rows):
            lines.extend(provenance_lines(rows.iloc[0]))
        if len(rows) and rows["fake_score"].notna().any():
            parts.append(self._explain_box(path, rows))
        parts.append(widgets.HTML("<br>".join(lines)))
        return widgets.VBox(parts, layout=widgets.Layout(
            border="1px solid #ccc", margin="4px", padding="4px", width=f"{THUMBNAIL_SIDE + 12}px"))

    def _explain_box(self, path: str, rows: pd.DataFrame) -> widgets.Widget:
        """An Explain button that shows the heatmap of the first scored model's crop."""
        model = rows.loc[rows["fake_score"].notna(), "model"].iloc[0]
        button = widgets.Button(description=f"Explain ({model})", icon="eye",
                                layout=widgets.Layout(width="auto"))
        box = widgets.VBox([button])
        button.on_click(lambda _: self.explain(path, model, box))
        return box

    def explain(self, path: str, model: str, box: widgets.VBox | None = None) -> Image.Image | None:
        """Draw the heatmap of ``model`` for ``path`` (the Explain button of a gallery card).

        Returns:
            The whole image with the heatmap over the scored crop, or None when it could not be
            made (the reason is shown in the card or the status line).
        """
        from .explain import ExplainUnavailableError, explain_image
        from .faces import FaceCropper

        try:
            detector = self._detector(model)
            image = load_image(path)
            if self._cropper is None:
                self._cropper = FaceCropper(device=detector.device)
            explanation = explain_image(image, detector, face_crop=self.face_crop_box.value,
                                        cropper=self._cropper, path=path)
            overlay = explanation.image_overlay(image)
        except (ExplainUnavailableError, ImageReadError) as exc:
            message = html.escape(str(exc))
            if box is not None:
                box.children = [*box.children[:1], widgets.HTML(f"<i>{message}</i>")]
            else:
                self._show_status(message, error=True)
            return None
        if box is not None:
            thumbnail = overlay.copy()
            thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            box.children = [*box.children[:1], widgets.Image(value=_png(thumbnail), format="png"),
                            widgets.HTML(f"<small>heatmap: where {html.escape(model)} found "
                                         "evidence of a fake (a coarse hint, not proof)</small>")]
        return overlay

    def _labelled(self, results: pd.DataFrame) -> pd.DataFrame:
        parts = []
        for model, rows in results.groupby("model", sort=False):
            own = self._detector(str(model)).scoring
            scoring = own.override(threshold=self.threshold_slider.value) \
                if self.user_threshold else own
            rows = relabel(rows, scoring.labels)
            if "label_rule" in rows:
                rows["label_rule"] = scoring.rule
            parts.append(rows)
        return pd.concat(parts).loc[results.index]

    def _detector(self, model: str) -> Detector:
        """The loaded model, loaded once per (name, weights folder, device) and reused by every
        run, the slider and the Explain button."""
        key = (model, str(self.weights_dir or ""), str(self.device))
        if key not in self._detectors:
            self._detectors[key] = load_model(model, self.weights_dir, self.device)
        return self._detectors[key]

    def _render_figure(self) -> None:
        with self._lock:
            table = self.results
        figure = score_histogram(table, label_column="known_label", widget=True)
        for trace in figure.data:
            trace.on_selection(self._on_histogram_selection)
        self.figure = figure
        self.figure_box.children = [figure]

    def _on_histogram_selection(self, trace: Any, points: Any, selector: Any) -> None:
        """A drag-selection on the histogram sets the gallery's score range."""
        xrange = getattr(selector, "xrange", None)
        if xrange is None:
            return
        low, high = sorted(max(0.0, min(1.0, float(v))) for v in xrange)
        self.score_range.value = (low, high)
        self.views.selected_index = 1

    # -- export ---------------------------------------------------------------------------

    def export_csv(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Write the results (result schema, current labels) to the CSV path box or ``path``."""
        target = Path(path or self.csv_path.value).expanduser()
        with self._lock:
            table = self.results.drop(columns=["known_label"])
        if table.empty:
            self._show_status("Nothing to save yet: run a classification first.", error=True)
            return None
        try:
            written = write_csv(table, target)
        except OSError as exc:
            self._show_status(f"Could not write {html.escape(str(target))}: "
                              f"{html.escape(exc.strerror or str(exc))}", error=True)
            return None
        self._show_status(f"Saved {len(table)} rows to {html.escape(str(written))}.")
        return written
