"""How a model's score for an image is made and read: one frozen policy per model.

A :class:`Scoring` holds everything that decides an image's verdict besides the pixels and the
weights: which region is scored (the whole image, or a face crop with its
:class:`~deepfake_toolkit.faces.FaceCropConfig` and what to do when no face is found) and how the
score becomes a label (the model's operating threshold, a threshold the user chose, or the five
bands). A loaded model carries its own as ``detector.scoring`` (the region it was trained and
validated on, the threshold chosen for it); every entry point - the Python API, the CLI, evaluate,
the server, the explorer, batch runs - starts from that policy and applies the user's overrides
with :meth:`Scoring.override`, so that the same image gets the same label from each of them.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .faces import FaceCropConfig, NO_FACE_POLICIES, NoFacePolicy
from .results import Bands, LabelScheme, Threshold

FaceSettings = FaceCropConfig | Mapping[str, Any]
"""Face-crop settings given by a user: a whole :class:`FaceCropConfig`, or a mapping of the
settings to change in the model's own (e.g. ``{"margin": 0.3}``)."""

HELP: dict[str, str] = {
    "face_crop": "score the face crop (on) or the whole image (off); unset: as the model was "
                 "trained (every shipped model: face crop)",
    "no_face": "with face crop, an image without a face is scored whole ('whole', the "
               "default) or {skip}",
    "threshold": "label 'fake' when fake_score >= T, else 'real'; unset: the model's own "
                 "operating threshold (chosen on validation data; the default model's is "
                 "recorded with its weights), or the five score bands for a model without one",
    "bands": "label with the five score bands (likely fake > 0.8 > weakly fake > 0.6 > uncertain "
             "> 0.4 > weakly real > 0.2 > likely real) even when the model has an operating "
             "threshold",
    "detector": "face detector: mtcnn (the shipped models were trained on its crops) or "
                "retinaface (about 10x faster on a CPU; pip install "
                "'deepfake-toolkit[retinaface]')",
    "margin": "context around the detected face, as a fraction of its longer side",
    "square": "make the crop square",
    "min_face_size": "smallest face that counts, in image pixels",
    "min_prob": "smallest detector probability that counts as a face (0-1)",
    "select": "which face is scored: the largest, the most probable, or all (the image gets "
              "the highest score)",
    "edge": "a crop running past the image edge: shrink the margin to fit, or pad with black",
    "detect_max_side": "downscale larger images to this many pixels for detection only (0: "
                       "never)",
    "mtcnn_search": "smallest face MTCNN searches for, in pixels of the image it looks at: "
                    "'scaled' (default), min_face_size scaled to that image, which skips the "
                    "slowest pyramid levels; or 12 (its window) to find every face it can",
    "retinaface_boxes": "RetinaFace's boxes moved onto the frame MTCNN draws around the same "
                        "face (mtcnn, the default: a margin frames a face the same way with either "
                        "detector) or its own, tighter boxes (raw)",
}
"""What each scoring setting does, in the words the CLI help, the server's task schema and the
explorer show (one text, so that they cannot disagree)."""


class ScoringMismatchWarning(UserWarning):
    """A run scores a model on another region than the one it was trained and validated on, so
    its scores and operating threshold are not those its model card reports."""


@dataclass(frozen=True)
class Scoring:
    """The whole scoring policy of a model.

    Args:
        face: The face crop scored (its detector, margin, minimum size and probability, face
            selection and edge handling), or None to score the whole image.
        no_face: With a face crop, what an image without a face gets: "whole" scores the whole
            image, "skip" records it with label "no face" and no score.
        threshold: The model's operating threshold on fake_score, chosen on validation data, or
            None when the model has none.
        user_threshold: A threshold the user chose; wins over ``threshold`` and ``bands``.
        bands: Label with the original system's five score bands even though the model has an
            operating threshold.

    Example:
        >>> from deepfake_toolkit import load_model   # doctest: +SKIP
        >>> scoring = load_model("default").scoring   # doctest: +SKIP
        >>> scoring.override(threshold=0.7).rule      # doctest: +SKIP
        'threshold 0.7 (user)'
    """

    face: FaceCropConfig | None = FaceCropConfig()
    no_face: NoFacePolicy = "whole"
    threshold: float | None = None
    user_threshold: float | None = None
    bands: bool = False

    def __post_init__(self) -> None:
        if self.no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {NO_FACE_POLICIES}, not {self.no_face!r}")
        for name in ("threshold", "user_threshold"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")

    @property
    def face_crop(self) -> bool:
        """Whether a face crop (rather than the whole image) is scored."""
        return self.face is not None

    @property
    def labels(self) -> LabelScheme:
        """The rule that turns fake_score into a label."""
        if self.user_threshold is not None:
            return Threshold(self.user_threshold)
        if self.threshold is not None and not self.bands:
            return Threshold(self.threshold)
        return Bands()

    @property
    def rule(self) -> str:
        """The label rule in words, as recorded in the ``label_rule`` column: "threshold 0.5291
        (model)", "threshold 0.7 (user)" or "bands"."""
        labels = self.labels
        if isinstance(labels, Bands):
            return labels.describe()
        return f"{labels.describe()} ({'user' if self.user_threshold is not None else 'model'})"

    def override(
        self,
        *,
        face_crop: bool | None = None,
        face_config: FaceSettings | None = None,
        no_face: NoFacePolicy | None = None,
        threshold: float | None = None,
        bands: bool | None = None,
    ) -> Scoring:
        """This policy with the user's choices applied; None leaves a setting as the model has it.

        Args:
            face_crop: False scores whole images; True scores face crops (with the model's face
                settings, or the defaults when the model scores whole images).
            face_config: Face-crop settings replacing the model's: a whole
                :class:`FaceCropConfig`, or a mapping of the settings to change (the rest stay
                the model's own). Implies ``face_crop=True`` unless ``face_crop`` is False.
            no_face: "whole" or "skip".
            threshold: A user threshold in [0, 1].
            bands: True labels with the five bands; False (with no user threshold) uses the
                model's operating threshold when it has one.
        """
        face = self.face
        if isinstance(face_config, FaceCropConfig):
            face = face_config
        elif face_config is not None:
            face = face_config_from_record({**dataclasses.asdict(face or FaceCropConfig()),
                                            **face_config})
        if face_crop is False:
            face = None
        elif face_crop and face is None:
            face = FaceCropConfig()
        return dataclasses.replace(
            self, face=face,
            no_face=self.no_face if no_face is None else no_face,
            user_threshold=self.user_threshold if threshold is None else float(threshold),
            bands=self.bands if bands is None else bool(bands))

    def region_differences(self, other: Scoring) -> list[str]:
        """How ``other``'s scored region differs from this one's, one "setting: this -> other"
        entry per difference (empty when the same)."""
        if self.face is None or other.face is None:
            if self.face is other.face:
                return []
            described = {None: "whole image"}
            return [f"region: {described.get(self.face, 'face crop')} -> "
                    f"{described.get(other.face, 'face crop')}"]
        mine, theirs = dataclasses.asdict(self.face), dataclasses.asdict(other.face)
        return [f"{key}: {mine[key]!r} -> {theirs[key]!r}" for key in mine
                if mine[key] != theirs[key]]

    def warn_if_region_differs(self, run: Scoring, model_name: str) -> None:
        """Warn (:class:`ScoringMismatchWarning`) when ``run`` scores another region than this,
        the model's own policy."""
        differences = self.region_differences(run)
        if differences:
            warnings.warn(
                f"model '{model_name}' was trained and validated on other face-crop settings than "
                f"this run's ({'; '.join(differences)}): its scores and operating threshold may "
                "not hold. Leave these settings unset to use the model's own.",
                ScoringMismatchWarning, stacklevel=4)

    def describe(self) -> dict[str, Any]:
        """The policy as plain JSON-ready data (see :meth:`from_record`)."""
        return {
            "face_crop": None if self.face is None else dataclasses.asdict(self.face),
            "no_face": self.no_face,
            "threshold": self.threshold,
            "user_threshold": self.user_threshold,
            "bands": self.bands,
            "rule": self.rule,
        }


def face_config_from_record(record: Any) -> FaceCropConfig | None:
    """The :class:`FaceCropConfig` a weight file or training record holds (None: whole image).

    Raises:
        ValueError: The record is not a face-crop record (unknown keys or bad values).
    """
    if record is None:
        return None
    if not isinstance(record, dict):
        raise ValueError(f"a face-crop record must be a JSON object, not {type(record).__name__}")
    unknown = sorted(set(record) - set(_FACE_SETTING_TYPES))
    if unknown:
        raise ValueError(f"unknown face-crop settings {unknown}")
    for key, value in record.items():
        allowed = _FACE_SETTING_TYPES[key]
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise ValueError(f"face-crop setting {key}={value!r} has the wrong type")
    return FaceCropConfig(**record)


_FACE_SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "margin": (int, float), "square": (bool,), "min_face_size": (int,),
    "min_prob": (int, float), "select": (str,), "edge": (str,),
    "detect_max_side": (int, type(None)), "detector": (str,), "mtcnn_search": (int, str),
    "retinaface_boxes": (str,),
}


def run_policies(models: Sequence[tuple[str, Scoring]], *, face_crop: bool | None = None,
                 face_config: FaceSettings | None = None, no_face: NoFacePolicy | None = None,
                 threshold: float | None = None, bands: bool | None = None) -> list[Scoring]:
    """The policy each model of one run scores with: its own, with the user's overrides applied.

    One run cuts one region per file for all its models, so every model scores the first
    model's region (after the overrides); each keeps its own label rule. A model whose own region
    differs from the run's gets a :class:`ScoringMismatchWarning`.

    Args:
        models: (name, own policy) of each model, e.g. ``(d.name, d.scoring)``.
        face_crop, face_config, no_face, threshold, bands: The user's overrides (None: the
            model's own), as in :meth:`Scoring.override`.
    """
    overrides = dict(face_crop=face_crop, face_config=face_config, no_face=no_face,
                     threshold=threshold, bands=bands)
    first = models[0][1].override(**overrides)
    policies = []
    for name, own in models:
        policy = dataclasses.replace(own.override(**overrides), face=first.face,
                                     no_face=first.no_face)
        own.warn_if_region_differs(policy, name)
        policies.append(policy)
    return policies
