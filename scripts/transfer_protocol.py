"""The transfer protocol: grouped validation and leave-one-folder-out for every candidate detector.

Runs on the features cached by scripts/extract_transfer_features.py (the CLIP tower's features and
the shipped CNN's logit for each face crop), so every fit below takes seconds:

1. Split: the grouped train/validation split ``deepfake-toolkit train`` draws (seed 0, 20% of each
   folder's groups, DFDC fakes grouped with their source video), drawn on the full labelled table,
   so it is the split the shipped CNN was trained on.
2. Candidates: a linear probe (balanced logistic regression on standardised features) for each
   CLIP feature set - final embedding, post-norm class token, class token of intermediate blocks;
   the CNN alone; and two fusions of the CNN with each probe: "fusion:" (a logistic stacking on
   validation logits) and "tfusion:" (transfer-weighted: the smallest CNN share that keeps every
   fake folder's validation AUC at the CNN's, then calibrated; transfer.fit_transfer_stacking).
3. Grouped validation per folder: probes fitted on the training split, scored on validation;
   fusion scores on validation are cross-fitted (5 folds by group), so no image is scored by a
   stacking fitted on it.
4. Leave-one-folder-out for every fake folder: the probe is refitted without the folder, its
   fusion's stacking refitted on the other folders' validation split. The CNN inside the fusion
   folds is the shipped one, trained with that folder's training split: it is NOT retrained
   (5 x 13 min on this machine), so fusion LOFO is an optimistic bound, recorded as such -
   unless ``--fold-cnn-scores DIR`` gives the scores of a CNN retrained without each folder
   (``scripts/lofo.py --scores DIR``): then each fusion fold uses that CNN and its split, the
   probe and the stacking are refitted on it, and the fusion's LOFO is a true one.
5. Self-blends (``--self-blends SB_DIR``, features of self-blended pseudo-fakes of training-split
   reals from ``extract_transfer_features.py --self-blends N``): every candidate in
   ``SELF_BLEND_CANDIDATES`` runs again as "<name>+sbi", its probe trained with the blends as
   extra fakes (weighted as one more fake folder); a LOFO fold drops the blends of the folder it
   holds out, with its reals. Validation, thresholds and stacking never see a blend.
6. Regularisation (``--probe-c C1,C2,...``): every candidate runs at every C of the grid, named
   "<candidate>@C<value>" (one C: the plain names). A probe's ``C`` is chosen like its features:
   by the mean LOFO AUC of the candidates it makes.
7. The pair, "pair:<anchor>|<transfer>": of all probe candidates (self-blend runs included), the
   one with the highest mean validation AUC over the fake folders (strong in family) and the one
   with the highest mean LOFO AUC (it transfers), mixed with the smallest share of the first at
   which every fake folder's validation AUC stays at the CNN's, then calibrated
   (transfer.fit_transfer_stacking held to the CNN's AUCs); there is no CNN in its score. Its
   LOFO folds reuse the two probes' folds, each with that fold's CNN as the reference.
8. Shipping, by rules fixed before the run. ``clip_probe``: the probe candidate with the highest
   mean LOFO AUC. ``default``: of the fused candidates (fusion, tfusion, pair) that meet issue
   16's ship rule (LOFO above the CNN's in >= 4 of 5 fake folders, honest folds only; no fake
   folder's validation AUC more than 0.01 below the CNN's), the one with the highest mean LOFO
   AUC (``--ship`` names another); ``default`` is registered as the pair, so a CNN fusion that
   wins is reported, not written as the default. ``cnn_clip_fusion``: the best CNN fusion by the
   same rule. Each is refitted on the full split - probes on the training split, stacking on the
   validation split - and each threshold keeps every real folder's validation real accuracy
   >= 0.80 and within that maximises balanced accuracy. The feature constants of the modules
   (``CLIP_PROBE_FEATURES``, ``FUSION_PROBE_FEATURES``, ``PAIR_ANCHOR_FEATURES``,
   ``PAIR_TRANSFER_FEATURES``) must name their feature sets; the run says when one does not.
   Written to WEIGHTS_DIR (clip_probe.safetensors; clip_fusion.safetensors and clip_pair.safetensors
   only when such a candidate meets the rule) with the record (clip_transfer.json).

Usage:
    python scripts/transfer_protocol.py DATA_ROOT FEATURE_DIR WEIGHTS_DIR [--groups GROUPS.csv]
        [--self-blends SB_DIR] [--fold-cnn-scores DIR] [--candidates A,B] [--probe-c C1,C2]
        [--transfer-margin M] [--ship auto|CANDIDATE]

``--transfer-margin M``: the "tfusion:" candidates keep every fake folder's validation AUC at the
CNN's plus M (transfer.fit_transfer_stacking), so that the share they choose does not sit on the
edge of the constraint. The default, "auto", takes the smallest margin of
transfer.TRANSFER_MARGINS whose cross-fitted AUC stays within 0.01 of the CNN's on every fake
folder (transfer.choose_transfer_margin), chosen again wherever a stacking is fitted: on the
validation split, and on each LOFO fold's own validation images; the shipped "tfusion:" uses
the same rule.
"""

import argparse
import dataclasses
import functools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deepfake_toolkit.models import get_spec, save_weights
from deepfake_toolkit.models.clip import CLIP_PROBE_FEATURES
from deepfake_toolkit.models.fusion import FUSION_PROBE_FEATURES
from deepfake_toolkit.models.pair import PAIR_ANCHOR_FEATURES, PAIR_TRANSFER_FEATURES
from deepfake_toolkit.models.cnn import CNN_WEIGHTS
from deepfake_toolkit.models.weights import PROJECT_WEIGHTS, load_safetensors
from deepfake_toolkit.train import find_labelled_images, read_groups
from deepfake_toolkit.transfer import (
    FUSIONS,
    PAIR,
    SelfBlends,
    assign_split,
    balanced_weights,
    feature_matrix,
    fit_probe,
    _logistic_stacking,
    _transfer_stacking,
    fold_cnn_auc,
    folder_table,
    head_state_dict,
    load_feature_cache,
    run_protocol,
    ship_rule,
    shipped_fusion,
    sigmoid,
    threshold_with_real_floor,
)

CANDIDATES = {
    "embeds": ("embeds",),
    "pooled": ("pooled",),
    **{f"cls{k}": (f"cls{k}",) for k in (4, 6, 8, 9, 10, 11)},
    "cls6+cls9+pooled": ("cls6", "cls9", "pooled"),
    "cls8+cls10+embeds": ("cls8", "cls10", "embeds"),
    "cls4+cls8+cls12": ("cls4", "cls8", "cls12"),
}
SELF_BLEND_CANDIDATES = tuple(CANDIDATES)
PROBE_C = 0.1
"""The probes' regularisation unless ``--probe-c`` gives a grid."""


def candidate_grid(names: list[str], grid: list[float]) -> tuple[dict, dict]:
    """Every candidate at every ``C`` of the grid: name -> features, name -> C. With one ``C``
    the names are the candidates' own; with several, "<candidate>@C<value>"."""
    features, probe_c = {}, {}
    for name in names:
        for c in grid:
            key = name if len(grid) == 1 else f"{name}@C{c:g}"
            features[key], probe_c[key] = CANDIDATES[name], c
    return features, probe_c


def base_name(candidate: str) -> str:
    """The probe candidate of a probe or fused name: "tfusion:embeds@C0.01+sbi" ->
    "embeds@C0.01" (its key in the C and feature tables)."""
    return candidate.split(":", 1)[-1].removesuffix("+sbi")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("features")
    parser.add_argument("weights_dir")
    parser.add_argument("--groups")
    parser.add_argument("--self-blends", metavar="SB_DIR",
                        help="features of self-blends of training reals "
                             "(extract_transfer_features.py --self-blends N)")
    parser.add_argument("--candidates", help="comma-separated subset of the candidates (a quick "
                        "look; the shipped record runs them all)")
    parser.add_argument("--fold-cnn-scores", metavar="DIR",
                        help="per-fold scores of CNNs retrained without each fake folder "
                             "(scripts/lofo.py --scores DIR; <folder>.csv or .csv.gz): the "
                             "fusion's LOFO becomes honest")
    parser.add_argument("--transfer-margin", type=margin_arg, default="auto", metavar="M",
                        help="tfusion: keep every fake folder's validation AUC at the CNN's + M "
                             "(default auto: transfer.choose_transfer_margin, wherever fitted)")
    parser.add_argument("--probe-c", default=str(PROBE_C), metavar="C[,C...]",
                        help=f"the probes' inverse L2 strength; several values run every "
                             f"candidate at each (default: {PROBE_C})")
    parser.add_argument("--ship", default="auto", metavar="CANDIDATE",
                        help="the fused candidate written as the default model (default auto: "
                             "of those meeting issue 16's ship rule, the highest mean LOFO)")
    args = parser.parse_args()
    candidates, probe_c = candidate_grid(
        args.candidates.split(",") if args.candidates else list(CANDIDATES),
        [float(v) for v in args.probe_c.split(",")])
    started = time.perf_counter()
    groups = read_groups(args.groups) if args.groups else None
    every = find_labelled_images(args.data, groups)
    table, arrays = load_feature_cache(args.features)
    group_of = dict(zip(every["relative"], every["group"]))
    table["group"] = table["relative"].map(group_of)
    is_val = assign_split(table, every)
    print(f"{len(table)} of {len(every)} images have cached features "
          f"({int(is_val.sum())} validation)", flush=True)
    blends, blend_record = None, None
    if args.self_blends:
        blend_table, blend_arrays = load_feature_cache(args.self_blends)
        parent = pd.DataFrame({"relative": blend_table["relative"]})
        parent_val = assign_split(parent, every)
        if parent_val.any() or (blend_table["label"] != 1).any():
            raise SystemExit(f"{int(parent_val.sum())} self-blends come from validation images: "
                             "extract them with the same --groups as this run")
        blends = SelfBlends(blend_arrays, blend_table["source"].to_numpy(),
                            blend_table["relative"].to_numpy())
        blend_record = {
            "blends": len(blend_table), "parents": int(blend_table["relative"].nunique()),
            "per_folder": blend_table.groupby("source").size().to_dict(),
            "mask_share_median": float(np.median(blend_arrays["mask_share"])),
            "cnn_fake_score_median": float(np.median(sigmoid(blend_arrays["cnn_logit"])))}
        print(f"{len(blend_table)} self-blends of {blend_record['parents']} training reals",
              flush=True)
    with_blends = ([n for n in candidates if n.split("@")[0] in SELF_BLEND_CANDIDATES]
                   if blends else [])
    fake_folders = sorted(set(table.loc[table.label == 1, "source"]))
    fold_cnn = None
    if args.fold_cnn_scores:
        found = {f: [Path(args.fold_cnn_scores) / f"{f}{suffix}" for suffix in (".csv", ".csv.gz")]
                 for f in fake_folders}
        fold_cnn = {f: pd.read_csv(next(p for p in paths if p.is_file()))
                    for f, paths in found.items() if any(p.is_file() for p in paths)}
        missing = sorted(set(fake_folders) - set(fold_cnn))
        if missing:
            print(f"no retrained-CNN scores for {', '.join(missing)}: their fusion folds are the "
                  "optimistic bound and do not count for the ship rule", flush=True)
    results = run_protocol(table, arrays, is_val, candidates, c=probe_c, self_blends=blends,
                           self_blend_candidates=with_blends, fold_cnn=fold_cnn,
                           transfer_margin=args.transfer_margin, pair=True)
    results["fusion_lofo_honest"] = sorted(fold_cnn or ())
    probes = {**candidates, **{f"{n}+sbi": candidates[n] for n in with_blends}}

    default_record = json.loads((PROJECT_WEIGHTS / "deepfake_toolkit_default.json").read_text())
    results["lofo"]["cnn"] = {
        folder: {"auc": values["auc"], "n_real": values["n_real"], "n_fake": values["n_fake"],
                 "note": "the default's own leave-one-folder-out (retrained per fold, every "
                         "image): weights/deepfake_toolkit_default.json"}
        for folder, values in default_record["leave_one_folder_out"]["results"].items()}
    # Where this run has a fold's retrained CNN, its own AUC is the one its fusion fold competes
    # with (the same network on the same images); the training record's figure stays beside it.
    for folder, fold in (fold_cnn or {}).items():
        recorded = results["lofo"]["cnn"][folder]["auc"]
        results["lofo"]["cnn"][folder] = {
            **fold_cnn_auc(fold), "training_record_auc": recorded,
            "note": "the CNN retrained without the folder whose scores the fusion fold uses "
                    "(scripts/lofo.py --scores)"}
    results["ship_rule"] = ship_rule(results, fake_folders)
    mean_lofo = {name: float(np.mean([results["lofo"][name][f]["auc"] for f in fake_folders]))
                 for name in results["lofo"] if name != "cnn"}
    preferred = max(probes, key=mean_lofo.get)
    ship = args.ship if args.ship != "auto" else shipped_fusion(results["ship_rule"], mean_lofo)
    # The CNN fusion ships as cnn_clip_fusion whatever wins: the best of its kinds by the rule.
    cnn_fusion = (ship if ship and not ship.startswith(PAIR) else
                  shipped_fusion(results["ship_rule"], mean_lofo, kinds=FUSIONS[:2]))
    print(f"mean LOFO AUC per candidate: {json.dumps(mean_lofo)}; preferred probe: {preferred}; "
          f"default model: {ship or 'none meets the ship rule'}", flush=True)
    if ship is not None and ship not in mean_lofo:
        raise SystemExit(f"--ship {ship}: not a candidate of this run")
    if ship is not None and not ship.startswith(PAIR):
        print(f"NOTE: the rule prefers {ship} to the pair: 'default' is registered as the pair "
              "(deepfake_toolkit/models/pair.py); register the CNN fusion as 'default' to ship "
              "it. This run writes it as cnn_clip_fusion.")
    expected = {preferred: CLIP_PROBE_FEATURES}
    if cnn_fusion:
        expected[cnn_fusion.split(":", 1)[1]] = FUSION_PROBE_FEATURES
    if ship and ship.startswith(PAIR):
        anchor, transfers = ship[len(PAIR):].split("|")
        expected.update({anchor: PAIR_ANCHOR_FEATURES, transfers: PAIR_TRANSFER_FEATURES})
    for name, features in expected.items():
        if probes[name] != features:
            print(f"NOTE: {name} is fitted on {probes[name]}, but the module that ships it reads "
                  f"{features}: change that constant (models/clip.py, fusion.py or pair.py) or "
                  "it will not load")

    # clip_probe: the probe LOFO prefers, fitted on the training split.
    labels = table["label"].to_numpy()
    sources = table["source"].to_numpy()

    @functools.cache
    def fit_shipped_probe(name: str):
        """The probe of candidate ``name`` on the training split (and its blends), and its
        logit for every image (fitted once: clip_probe's probe is often a fused model's too)."""
        x = feature_matrix(arrays, probes[name])
        x_train, train_table = x[~is_val], table[~is_val][["label", "source"]]
        if name.endswith("+sbi"):
            x_blends, blend_rows = blends.training_rows(probes[name])
            x_train = np.concatenate([x_train, x_blends])
            train_table = pd.concat([train_table, blend_rows], ignore_index=True)
        fitted = fit_probe(x_train, train_table["label"].to_numpy(),
                           balanced_weights(train_table), probe_c[base_name(name)])
        return fitted, fitted.logit(x)

    head, probe_logit = fit_shipped_probe(preferred)
    probe_threshold = threshold_with_real_floor(sigmoid(probe_logit[is_val]), labels[is_val],
                                                sources[is_val])
    out = Path(args.weights_dir)
    probe_spec = get_spec("clip_probe")
    probe_spec = dataclasses.replace(probe_spec, threshold=round(probe_threshold, 4),
                                     extra={**probe_spec.extra,
                                            "C": probe_c[base_name(preferred)],
                                            "features": list(probes[preferred]),
                                            "self_blends": preferred.endswith("+sbi")})
    save_weights(probe_spec, head_state_dict(head), out / probe_spec.weights[0].filename)
    val_table = table[is_val].reset_index(drop=True)
    shipped = {
        "clip_probe": {"candidate": preferred, "features": list(probes[preferred]),
                       "C": probe_c[base_name(preferred)],
                       "self_blends": preferred.endswith("+sbi"),
                       "threshold": probe_threshold,
                       "validation_in_sample_threshold": folder_table(
                           sigmoid(probe_logit[is_val]), val_table, probe_threshold)}}
    if cnn_fusion is not None:
        shipped["cnn_clip_fusion"] = write_fusion(
            cnn_fusion, fit_shipped_probe(cnn_fusion.split(":", 1)[1]), probes, arrays, table,
            is_val, args.transfer_margin, out)
    if ship is not None and ship.startswith(PAIR):
        shipped["default"] = write_pair(ship, fit_shipped_probe, probes, probe_c, arrays, table,
                                        is_val, args.transfer_margin, out)
    record = {
        "protocol": __doc__,
        "data": {"images_with_features": len(table), "labelled_images": len(every),
                 "validation": int(is_val.sum()),
                 "per_folder": table.groupby(["source", "label"]).size().rename(
                     lambda v: v).reset_index().to_dict("records")},
        "candidates": {k: list(v) for k, v in probes.items()},
        "self_blends": blend_record,
        "probe_C": probe_c,
        "transfer_margin": args.transfer_margin,
        "mean_lofo_auc": mean_lofo,
        "lofo_preferred": preferred,
        "default_model": ship,
        "results": results,
        "shipped": shipped,
        "seconds": time.perf_counter() - started,
    }
    (out / "clip_transfer.json").write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(markdown_tables(record, preferred))
    print(f"wrote {out / 'clip_transfer.json'} ({time.perf_counter() - started:.0f} s)")


def write_fusion(name: str, probe: tuple, probes: dict, arrays: dict, table: pd.DataFrame,
                 is_val: np.ndarray, transfer_margin: float | str, out: Path) -> dict:
    """Fit the fused candidate ``name`` for shipping - its stacking ("fusion:" logistic,
    "tfusion:" transfer-weighted with its margin) on the validation split, its threshold by the
    real-photo floor - and write it as ``cnn_clip_fusion`` (the shipped CNN's copy, the probe
    head, the stacking); returns its record."""
    head, probe_logit = probe
    z = np.stack([arrays["cnn_logit"].astype(np.float64), probe_logit], 1)
    stacking = "transfer" if name.startswith("tfusion:") else "logistic"
    # The same fits, "auto" margin included, as the candidates' in run_protocol.
    fit = (functools.partial(_transfer_stacking, margin=transfer_margin)
           if stacking == "transfer" else _logistic_stacking)
    stack_w, stack_b, fit_facts = fit(z[is_val], table[is_val])
    state = {f"cnn.{k}": v for k, v in load_safetensors(PROJECT_WEIGHTS / CNN_WEIGHTS).items()}
    state.update(head_state_dict(head, prefix="probe."))
    facts = {"candidate": name, "stacking": stacking, "cnn_share": fit_facts.get("cnn_share"),
             "transfer_margin": fit_facts.get("margin"),
             "probe_self_blends": name.endswith("+sbi")}
    return write_stacked("cnn_clip_fusion", state, z, stack_w, stack_b, table, is_val, facts,
                         {"features": list(probes[name.split(":", 1)[1]])}, out)


def write_pair(name: str, fit_shipped_probe, probes: dict, probe_c: dict, arrays: dict,
               table: pd.DataFrame, is_val: np.ndarray, transfer_margin: float | str,
               out: Path) -> dict:
    """Fit the pair candidate ``name`` ("pair:<anchor>|<transfer>") for shipping - both probes on
    the training split, their stacking on the validation split held to the CNN's AUCs there,
    the threshold by the real-photo floor - and write it as the default model; returns its
    record."""
    anchor, transfers = name[len(PAIR):].split("|")
    (anchor_head, anchor_logit), (transfer_head, transfer_logit) = (
        fit_shipped_probe(anchor), fit_shipped_probe(transfers))
    z = np.stack([anchor_logit, transfer_logit, arrays["cnn_logit"].astype(np.float64)], 1)
    stack_w, stack_b, fit_facts = _transfer_stacking(z[is_val], table[is_val], transfer_margin)
    # The CNN (column 2) is only the reference the stacking was held to: weight 0, not shipped.
    state = {**head_state_dict(anchor_head, prefix="anchor."),
             **head_state_dict(transfer_head, prefix="transfer.")}
    facts = {"candidate": name, "stacking": "transfer, held to the CNN's validation AUCs",
             "anchor": anchor, "transfer": transfers,
             "anchor_C": probe_c[base_name(anchor)], "transfer_C": probe_c[base_name(transfers)],
             "anchor_self_blends": anchor.endswith("+sbi"),
             "transfer_self_blends": transfers.endswith("+sbi"),
             "anchor_share": fit_facts["cnn_share"], "transfer_margin": fit_facts["margin"]}
    features = {"features": list(probes[anchor]) + list(probes[transfers]),
                "anchor_features": list(probes[anchor]),
                "transfer_features": list(probes[transfers])}
    return write_stacked("default", state, z[:, :2], stack_w[:2], stack_b, table, is_val, facts,
                         features, out)


def write_stacked(model: str, state: dict, z: np.ndarray, stack_w: np.ndarray, stack_b: float,
                  table: pd.DataFrame, is_val: np.ndarray, facts: dict, extra: dict,
                  out: Path) -> dict:
    """Write a stacked model: its threshold by the real-photo floor on the validation split, the
    stacking in ``state`` and in its spec with ``facts`` and ``extra``; returns its record."""
    labels, sources = table["label"].to_numpy(), table["source"].to_numpy()
    fused = sigmoid(z @ stack_w + stack_b)
    threshold = threshold_with_real_floor(fused[is_val], labels[is_val], sources[is_val])
    state = {**state, "stack_weight": torch.tensor(stack_w, dtype=torch.float32),
             "stack_bias": torch.tensor([stack_b], dtype=torch.float32)}
    facts = {**facts, "stack_weight": [float(v) for v in stack_w], "stack_bias": stack_b}
    spec = get_spec(model)
    spec = dataclasses.replace(spec, threshold=round(threshold, 4),
                               extra={**spec.extra, **extra, **facts})
    save_weights(spec, state, out / spec.weights[0].filename)
    return {**facts, "threshold": threshold, "validation_in_sample_stacking": folder_table(
        fused[is_val], table[is_val].reset_index(drop=True), threshold)}


def margin_arg(value: str) -> float | str:
    """--transfer-margin: a number, or "auto"."""
    return value if value == "auto" else float(value)


def markdown_tables(record: dict, preferred: str) -> str:
    """The record's results as the model card's tables: validation and LOFO AUC per fake folder,
    real accuracy per real folder at each candidate's threshold."""
    results = record["results"]
    honest = set(results.get("fusion_lofo_honest", ()))
    names = ["cnn", *record["candidates"], *(f"{kind}{n}" for kind in FUSIONS[:2]
                                             for n in record["candidates"]),
             *(n for n in results["lofo"] if n.startswith(PAIR))]
    validation = results["validation"]
    folders = sorted(k for k in validation["cnn"] if k != "all")
    fake = [f for f in folders if validation["cnn"][f].get("n_fake")]
    real = [f for f in folders if validation["cnn"][f].get("n_real")]

    def cell(value) -> str:
        return "-" if value is None or value != value else f"{value:.3f}"

    def escape(name: str) -> str:
        """A candidate's name in a table cell (the pair's name holds a "|")."""
        return name.replace("|", "\\|")

    lines = ["| candidate | " + " | ".join(f"val {f}" for f in fake) + " | val all | "
             + " | ".join(f"LOFO {f}" for f in fake) + " | mean LOFO |",
             "|---" * (2 * len(fake) + 3) + "|"]
    for name in names:
        lofo = results["lofo"].get(name, {})
        lofo_aucs = [lofo.get(f, {}).get("auc") for f in fake]
        bound = [name.startswith(FUSIONS) and f not in honest for f in fake]
        mean = (sum(lofo_aucs) / len(lofo_aucs)) if lofo and None not in lofo_aucs else None
        label = (f"**{escape(name)}**" if name in (preferred, *(k + preferred for k in FUSIONS))
                 else escape(name))
        lines.append(f"| {label} | " + " | ".join(cell(validation[name][f].get("auc"))
                                                 for f in fake)
                     + f" | {cell(validation[name]['all']['auc'])} | "
                     + " | ".join(cell(a) + (" †" if b else "") for a, b in zip(lofo_aucs, bound))
                     + f" | {cell(mean)} |")
    lines += ["", "Fusion LOFO: in every fold the CNN (scripts/lofo.py --scores), the probe and "
              "the stacking were all trained without the folder, except where marked †: there "
              "the fold is an optimistic bound, its CNN the shipped one, trained on the held-out "
              "folder's training split.",
              "", "| candidate | threshold | " + " | ".join(real) + " | fake accuracy (all) |",
              "|---" * (len(real) + 3) + "|"]
    for name in names:
        lines.append(f"| {escape(name)} | {results['threshold'][name]:.4f} | "
                     + " | ".join(cell(validation[name][f].get("real_accuracy")) for f in real)
                     + f" | {cell(validation[name]['all']['fake_accuracy'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
