"""Fast diagnostic of a tutorial checkpoint against the paper's claims.

``python -m residual_core.runner.diagnose [--checkpoint PATH]`` measures, for any tutorial
CLIP checkpoint (v1 or v2 world, any depth), what the book's chapters will find, in a few
minutes on one CPU thread and without touching the chapters' encoding caches (units are
decomposed in memory). It is the yardstick for choosing the world and the training recipe of
the shipped model, ported from branch ``tutorial-model`` (there
``residual_core.tutorial.diagnose``; it lives in the runner because it needs ``analysis/``,
which ``tutorial/`` may not import):

- zero-shot accuracy of every attribute task on the training distribution (against 2× chance)
  and on the downstream (shifted) tasks (``data.world.downstream_tasks``);
- intrinsic dimension of every unit on the world's reference set (linear PCA-99 and TwoNN);
- the best linear-probe unit and head per attribute;
- subspace similarity across distributions;
- TextSpan on the reference set against the probes (chapter 03's ground-truth and head-view
  tables);
- on every downstream task, mean-ablation by layer, coarse selection (heads ranked and k chosen
  on validation) and the specialisation of the heads the task relies on (chapter 04).

Claims are decided **only** by :mod:`residual_core.analysis.claims` (C1–C4
``id_claims``, C5–C6 ``stability_claims``, C7–C8 ``specialization_claims``, C9–C11
``alignment_claims``); this module computes their inputs with the library and the chapters'
analysis functions (``core`` decomposition, PCA, probes; ``analysis`` geometry, chapter 03's
TextSpan ground-truth and head-view tables from :mod:`residual_core.analysis.specialization`,
chapter 04's per-task analysis, layer ablation, coarse selection and task table from
:mod:`residual_core.analysis.alignment`). C12–C14 (chapter 05) need ResiDual trained on many
tasks and are not measured here: run chapter 05. ``--record NAME`` appends a summary to
``residual_core/tutorial/assets/prototypes.json``, the record of which world and training
choices moved which claims.

Example::

    python -m residual_core.runner.diagnose                    # the shipped checkpoint
    python -m residual_core.runner.diagnose --checkpoint .cache/tutorial_v2/tiny_clip_v2.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import UInt8

from residual_core.analysis import alignment as AL
from residual_core.analysis import claims as C
from residual_core.analysis import specialization as SP
from residual_core.analysis.geometry import (
    chance_similarity,
    depth_profile,
    subspace_similarity,
    twonn_fit,
)
from residual_core.core.ablation import accuracy
from residual_core.core.decompose import UnitProjector, decompose
from residual_core.core.dictionary import TextDictionary, embed_texts
from residual_core.core.errors import InputError, cli_main
from residual_core.core.intrinsic_dim import linear_id
from residual_core.core.model import LoadedModel
from residual_core.core.probes import probe_table
from residual_core.core.spectral import unit_pca
from residual_core.core.units import Units, label_table
from residual_core.core.zeroshot import build_classifier
from residual_core.data import world as WD
from residual_core.data.dictionaries import load_dictionary
from residual_core.data.registry import load_dataset
from residual_core.models.loading import load_tutorial_checkpoint
from residual_core.tutorial import world as W
from residual_core.tutorial.model import (
    images_to_tensor,
    read_record,
    record_fingerprint,
    record_world,
)

__all__ = ["HISTORY_PATH", "Encoded", "attach_book", "book_claims", "embedded_dictionary",
           "encode", "history_entry", "id_table", "load_checkpoint", "main", "model_entry",
           "record_history", "run", "world_of", "zero_shot_target"]

HISTORY_PATH = Path(__file__).resolve().parents[1] / "tutorial" / "assets" / "prototypes.json"
"""The models the tutorial model is chosen from, as the diagnostic measured them."""


class Encoded:
    """Units of one dataset split with its ground-truth attributes (``(n,)`` tensors)."""

    def __init__(self, units: Units, attributes: dict[str, torch.Tensor]) -> None:
        self.units = units
        self.attributes = attributes


def load_checkpoint(path: str | Path) -> tuple[LoadedModel, dict[str, Any]]:
    """A tutorial checkpoint (hash-checked) as a :class:`LoadedModel`, with its json record."""
    return load_tutorial_checkpoint(path)


def world_of(record: dict[str, Any]) -> str:
    """The world a checkpoint was trained on (``v1`` for checkpoints from before ``--world``)."""
    return record_world(record)


def zero_shot_target(n_classes: int) -> float:
    """Zero-shot accuracy a training-distribution task should reach.

    2× chance, or for a binary task chance + ½(1 − chance).
    """
    chance = 1.0 / n_classes
    return chance + 0.5 * (1 - chance) if n_classes == 2 else 2 * chance


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: UInt8[np.ndarray, "n height width 3"],
                  batch_size: int = 250) -> Units:
    """Decompose uint8 ``(H, W, 3)`` images into the model's labelled units (in memory)."""
    projector = UnitProjector.from_model(loaded.model)
    pixels = loaded.model.visual.image_size[0]  # open_clip keeps (height, width)
    parts = [decompose(loaded.model, images_to_tensor(images[i:i + batch_size], pixels),
                       projector=projector) for i in range(0, len(images), batch_size)]
    return Units(torch.cat([p.data for p in parts]), parts[0].labels, parts[0].layout)


def encode(loaded: LoadedModel, dataset: str, split: str, size: int,
           batch_size: int = 250) -> Encoded:
    """Decompose the images of a registered tutorial dataset split (in memory, no cache)."""
    ds = load_dataset(dataset, split, size=size)
    units = encode_images(loaded, ds.images, batch_size)
    return Encoded(units, {k: torch.as_tensor(v) for k, v in (ds.attributes or {}).items()})


def id_table(units: Units, threshold: float = 0.99, max_points: int = 50_000,
             seed: int = 0) -> pd.DataFrame:
    """Linear (PCA-``threshold``) and TwoNN intrinsic dimension of every unit (in memory).

    The columns of chapter 01's table that :func:`~residual_core.analysis.claims.id_claims`
    reads: ``label_table`` columns, ``linear_id``, ``evr_pc1``, ``twonn``, ``ratio``.
    """
    pca = unit_pca(units)
    table = label_table(units.labels)
    evr = pca.explained_variance_ratio
    table["linear_id"] = linear_id(evr, threshold).cpu().numpy()
    table["evr_pc1"] = evr[:, 0].cpu().numpy()
    table["twonn"] = [twonn_fit(units.data[:, i], max_points=max_points, seed=seed).dimension
                      for i in range(len(units.labels))]
    table["ratio"] = table.linear_id / table.twonn
    return table


def embedded_dictionary(loaded: LoadedModel, name: str = "tutorial") -> TextDictionary:
    """A dictionary with ``loaded``'s text embeddings, computed in memory (no text cache).

    As ``load_dictionary(name).embed(loaded)`` in chapters 03–04, but the embeddings are
    written to a temporary folder only (the diagnostic leaves the chapters' caches alone).
    """
    import dataclasses
    import tempfile

    words = load_dictionary(name)
    with tempfile.TemporaryDirectory() as tmp:
        emb = embed_texts(loaded, words.texts, cache_dir=tmp)
    return dataclasses.replace(words, embeddings=emb, model=loaded.name)


def _first_task(dist: str) -> str:
    return f"{dist}.{next(iter(W.ATTRIBUTES))}"


def run(loaded: LoadedModel, world: str = "v1", *, reference_size: int = 5000,
        shift_size: int = 1000, probe_size: int = 2000, val_size: int = 1000,
        twonn_points: int = 50_000, n_texts: int = 8, rank: int = 80, random_seeds: int = 10,
        k_carriers: int = 2, dictionary: str = "tutorial", seed: int = 0,
        log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Every measurement of the diagnostic on one model.

    Args:
        loaded: The model.
        world: The world it was trained on (``v1``/``v2``): its datasets are measured.
        reference_size: Images of the world's reference set (train) for ID, PCA, TextSpan
            and the means of mean ablation.
        shift_size: Images per distribution for the subspace similarity (train split).
        probe_size: Train and test images per distribution for probes and zero-shot.
        val_size: Validation images per downstream distribution (coarse selection ranks
            heads and picks k on them, chapter 04).
        twonn_points: TwoNN subsample.
        n_texts: TextSpan picks per head (chapter 03's ``n_texts``).
        rank: TextSpan's singular directions (chapter 03's ``rank``).
        random_seeds: Seeds of the random ranking ``R`` of coarse selection.
        k_carriers: Heads a task relies on (chapter 04's ``k_carriers``).
        dictionary: The TextSpan dictionary (``tutorial`` or ``general``).
        seed: Seed of every random choice (TwoNN subsample, permutations, random bases).
        log: Where progress lines go.

    Returns:
        ``claims`` (the claims table of :mod:`residual_core.analysis.claims`, C1–C11),
        ``zero_shot``, ``ids``, ``probes``, ``best_units``, ``similarity``, ``truth`` and
        ``view`` (chapter 03's tables), ``layers``, ``selection`` and ``tasks`` (chapter 04's),
        ``timings`` (seconds per part) and ``wall_s``.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    last = [t0]

    def lap(part: str) -> None:
        now = time.perf_counter()
        timings[part] = now - last[0]
        last[0] = now
        log(f"[{now - t0:5.0f}s] {part} done ({timings[part]:.1f}s)")

    dists = WD.distributions(world)
    base = next(d for d, s in dists.items() if s is None)
    ref = encode(loaded, WD.reference_name(world), "train", reference_size)
    layout = ref.units.layout
    heads = [u for u in ref.units.labels if label_table([u]).kind[0] == "head"]
    ids = id_table(ref.units, max_points=twonn_points, seed=seed)
    tables = [C.id_claims(ids, layout.d_head, seed)]
    lap("reference and IDs (C1-C4)")

    natural = [d for d, s in dists.items() if s != "random"]
    world_tasks = [f"{base}.{a}" for a in W.ATTRIBUTES]
    down = WD.downstream_tasks(world)
    clfs = {}
    for task in world_tasks + down:
        ds = load_dataset(task, "test", size=1)
        clfs[task] = build_classifier(loaded, ds.classnames, ds.templates)
    test = {d: encode(loaded, _first_task(d), "test", probe_size) for d in natural}

    def zs(task: str, z: torch.Tensor | None = None) -> float:
        dist, attr = task.split(".")
        clf = clfs[task]
        emb = test[dist].units.data.sum(1) if z is None else z
        return accuracy(emb, clf.weights.cpu().float(), test[dist].attributes[attr],
                          clf.normalize_features)

    rows = []
    for task in world_tasks + down:
        dist, attr = task.split(".")
        k = len(W.ATTRIBUTES[attr])
        rows.append({"task": task, "K": k, "zero_shot": zs(task),
                     "target": zero_shot_target(k) if dist == base else float("nan")})
    zero_shot = pd.DataFrame(rows)
    lap("zero-shot")

    train = encode(loaded, _first_task(base), "train", probe_size)
    probes = probe_table(train.units, train.attributes, test[base].units, test[base].attributes)
    best_rows = []
    for attr in W.ATTRIBUTES:
        col = probes[attr].drop("embedding")
        best = col.idxmax()
        best_rows.append({"attribute": attr, "best_unit": best, "best_acc": col[best],
                          "best_head": col[heads].idxmax(), "best_head_acc": col[heads].max(),
                          "embedding": probes.loc["embedding", attr]})
    best_units = pd.DataFrame(best_rows)
    lap("probes")

    # C5/C6: median head similarity of every distribution's subspaces to the reference's.
    ref_pca = unit_pca(ref.units)
    chance = float(chance_similarity(ref_pca, seed=seed)[heads].median())
    sims = {}
    for dist, shift in dists.items():
        enc = encode(loaded, _first_task(dist), "train", shift_size)
        sim = pd.Series(subspace_similarity(ref_pca, unit_pca(enc.units)).numpy(),
                        index=list(ref_pca.labels))
        sims[shift or base] = float(sim[heads].median())
    similarity = pd.Series(sims, name="median_head_similarity")
    tables.append(C.stability_claims(sims, chance, control="random", same=(base,)))
    lap("subspace similarity (C5-C6)")

    # C7/C8: chapter 03's ground-truth and head-view tables (TextSpan on the reference set,
    # probes of the training distribution), as notebooks/03_head_specialization.py builds them.
    if dictionary == "tutorial" and world == "v3":  # its background words are patterns
        dictionary = "tutorial-v3"
    words = embedded_dictionary(loaded, dictionary)
    textspan = SP.explain_heads(ref.units, heads, words, n_iters=n_texts, rank=rank)
    probe_chance = SP.chance_levels(test[base].attributes)
    families = {a: SP.task_family(a, words.family_names()) for a in probes.columns}
    truth = SP.ground_truth_table(probes, textspan, words, families, probe_chance, n_texts=3)
    shares = SP.family_shares(list(textspan.values()), words)
    lift = SP.probe_lift(probes.loc[heads], probe_chance)
    view = SP.head_views(SP.specialization_scores(shares), lift, families)
    tables.append(C.specialization_claims(truth[truth["rank"] == 1], view))
    lap("TextSpan and probe views (C7-C8)")

    # C9-C11: chapter 04's per-task analysis of every downstream task (probes on train, heads
    # ranked and k chosen on val, everything reported on test), as
    # notebooks/04_alignment_and_zeroshot.py does it.
    means = ref.units.data.mean(0)
    dists_down = list(dict.fromkeys(t.split(".")[0] for t in down))
    splits = {d: (encode(loaded, _first_task(d), "train", probe_size),
                  encode(loaded, _first_task(d), "val", val_size)) for d in dists_down}
    results, down_probes = {}, {}
    for dist in dists_down:  # every attribute of a distribution probed at once
        attrs = [t.split(".")[1] for t in down if t.split(".")[0] == dist]
        (tr, _), te = splits[dist], test[dist]
        table = probe_table(tr.units, {a: tr.attributes[a] for a in attrs},
                            te.units, {a: te.attributes[a] for a in attrs})
        down_probes.update({f"{dist}.{a}": table[a] for a in attrs})
    for task in down:
        dist, attr = task.split(".")
        (tr, va), te = splits[dist], test[dist]
        results[task] = AL.analyze_task(
            task, (tr.units, tr.attributes[attr]), (va.units, va.attributes[attr]),
            (te.units, te.attributes[attr]), means, clfs[task], random_seeds=random_seeds,
            probes=down_probes[task])
    layers, _ = AL.ablation_by_layer(results)
    selection = AL.selection_table(results)
    task_families = {t: SP.task_family(t, words.family_names()) for t in down}
    task_tab = AL.task_table(list(results.values()), shares, task_families,
                             k_carriers=k_carriers)
    tables.append(C.alignment_claims(layers, selection, task_tab, seed=seed))
    lap("layer ablation, coarse selection, task table (C9-C11)")
    claims = pd.concat(tables, ignore_index=True)
    return {"claims": claims, "zero_shot": zero_shot, "ids": ids, "probes": probes,
            "best_units": best_units, "similarity": similarity, "truth": truth, "view": view,
            "layers": layers, "ablation_means": AL.ablation_means_compared(results),
            "selection": selection, "tasks": task_tab, "timings": timings,
            "wall_s": time.perf_counter() - t0}


def model_entry(name: str, note: str, record: dict[str, Any], commit: str) -> dict[str, Any]:
    """What a prototype was and how it was trained, from its checkpoint's record."""
    v = record["model_cfg"]["vision_cfg"]
    return {
        "name": name, "note": note, "commit": commit,
        "world": world_of(record),
        "model": f"{v['layers']} layers, {v['width'] // v['head_width']} heads of "
                 f"{v['head_width']}, width {v['width']}, MLP x{v['mlp_ratio']:g}"
                 + (f", patch {v['patch_size']}" if "patch_size" in v else ""),
        "train_command": record["metadata"].get("command", ""),
        "steps": record["metadata"].get("steps_done"),
        "sha256": record["sha256"],
    }


def history_entry(name: str, note: str, record: dict[str, Any], out: dict[str, Any],
                  commit: str) -> dict[str, Any]:
    """One prototype's summary: what it was, how it was trained, what the diagnostic found."""
    zs = out["zero_shot"]
    train_dist = zs[~zs.target.isna()]
    prof = depth_profile(out["ids"], "twonn")
    return {
        **model_entry(name, note, record, commit),
        "below_target": [t for t, a, g in zip(train_dist.task, train_dist.zero_shot,
                                              train_dist.target, strict=True) if a < g],
        "twonn_per_layer": [round(float(m), 2) for m in prof["mean"]],
        "claims": {r.id: {"holds": r.holds == "yes", "measured": r.measured}
                   for r in out["claims"].itertuples()},
    }


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=Path(__file__).parent).stdout.strip()


def _read_history(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else []


def _write_history(path: Path, entries: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps(entries, indent=1) + "\n")


def record_history(name: str, note: str, record: dict[str, Any], out: dict[str, Any],
                   path: Path | None = None) -> None:
    """Add (or replace) ``name`` in the history file, with the commit of this working tree.

    A book scoreboard already attached to ``name`` (``attach_book``) is kept: it was measured
    on the same checkpoint, and the diagnostic cannot re-create it.
    """
    path = HISTORY_PATH if path is None else path
    entry = history_entry(name, note, record, out, _commit())
    entries = _read_history(path)
    old = next((e for e in entries if e["name"] == name), {})
    if "book" in old and old.get("sha256") == entry["sha256"]:
        entry["book"] = old["book"]
    _write_history(path, [e for e in entries if e["name"] != name] + [entry])


def results_from_json(path: str | Path) -> dict[str, Any]:
    """The tables ``record_history`` reads, from a file written by ``--json``.

    Raises:
        InputError: If the file is not a diagnostic's json (no claims, zero-shot or ID table).
    """
    data = json.loads(Path(path).read_text())
    missing = [k for k in ("claims", "zero_shot", "ids") if k not in data]
    if missing:
        raise InputError(f"{path} is not a diagnostic's --json output (no {', '.join(missing)})")
    return {"fingerprint": data.get("fingerprint", ""),
            **{k: pd.DataFrame(data[k]) for k in ("claims", "zero_shot", "ids")}}


def book_claims(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Every claim of a built book's run (the chapters' ``*.claims.csv`` in ``directory``).

    Raises:
        InputError: If ``directory`` holds no claims table.
    """
    tables = sorted(Path(directory).glob("*.claims.csv"))
    if not tables:
        raise InputError(f"no *.claims.csv in {directory}: point at a built book's executed "
                         "chapters (e.g. _build/executed)")
    return {r.id: {"holds": r.holds == "yes", "measured": r.measured}
            for table in tables for r in C.read_claims(table).itertuples()}


def attach_book(name: str, directory: str | Path, path: Path | None = None,
                record: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
    """Add the whole book scoreboard (``book_claims``) to history entry ``name`` as ``book``.

    The diagnostic decides C1–C11 on its own data sizes; the book's run is what readers see,
    and the only source of C12–C14. Without an entry ``name``, one is made from the checkpoint
    ``record`` (what the model is and how it was trained, with ``note``).

    Raises:
        InputError: If the history has no entry ``name`` and no ``record`` is given.
    """
    path = HISTORY_PATH if path is None else path
    entries = _read_history(path)
    names = [e["name"] for e in entries]
    if name not in names:
        if record is None:
            raise InputError(f"no prototype {name!r} in {path.name}; recorded: "
                             f"{', '.join(names)}")
        entries.append(model_entry(name, note, record, _commit()))
        names.append(name)
    entry = entries[names.index(name)]
    entry["book"] = book_claims(directory)
    _write_history(path, entries)
    return entry


def main(argv: list[str] | None = None) -> int:
    """Entry point: print every table and the claims; optionally save them as json."""
    from residual_core.tutorial.model import CHECKPOINT_PATH

    p = argparse.ArgumentParser(
        prog="python -m residual_core.runner.diagnose", description=__doc__.splitlines()[0],
        epilog="Claims reported: C1-C11, each decided by residual_core.analysis.claims. "
        "C12-C14 (ResiDual against fine-tuning, a linear adapter and zero-shot) need ResiDual "
        "trained on many tasks and are not measured by the diagnostic: run chapter 05 "
        "(python -m residual_core.runner run 05_residual). Smaller --probe-size, --val-size, "
        "--reference-size and --random-seeds make the run faster; the per-part timings are "
        "printed.")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT_PATH)
    p.add_argument("--world", choices=list(W.WORLDS), default=None,
                   help="the world whose datasets are measured (default: the checkpoint's)")
    p.add_argument("--reference-size", type=int, default=5000)
    p.add_argument("--shift-size", type=int, default=1000)
    p.add_argument("--probe-size", type=int, default=2000,
                   help="train and test images per distribution (probes, zero-shot, chapter 04)")
    p.add_argument("--val-size", type=int, default=1000,
                   help="validation images per downstream distribution (coarse selection)")
    p.add_argument("--random-seeds", type=int, default=10,
                   help="seeds of coarse selection's random ranking R")
    p.add_argument("--n-texts", type=int, default=8, help="TextSpan picks per head")
    p.add_argument("--dictionary", default="tutorial", choices=["tutorial", "general"],
                   help="TextSpan's dictionary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--record", default=None, metavar="NAME",
                   help=f"append a summary to {HISTORY_PATH.name} (the history of prototypes) "
                   "under this name")
    p.add_argument("--note", default="", help="what this model changed (with --record)")
    p.add_argument("--book", type=Path, default=None, metavar="DIR",
                   help="with --record: add the scoreboard of a book built on --checkpoint "
                   "(DIR holds its chapters' *.claims.csv, e.g. _build/executed) to the entry "
                   "NAME (made from the checkpoint's record if new), without running the "
                   "diagnostic")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="with --record: record the results a diagnostic of --checkpoint wrote "
                   "with --json FILE, without running it again")
    args = p.parse_args(argv)
    if args.book is not None and not args.record:
        p.error("--book needs --record NAME (the entry the scoreboard belongs to)")
    if args.from_json is not None and (not args.record or args.book is not None):
        p.error("--from-json needs --record NAME, and not --book")
    return cli_main(lambda: _command(args), "residual_core.runner.diagnose: error:")


def _command(args: argparse.Namespace) -> None:
    if args.book is not None:
        entry = attach_book(args.record, args.book, record=read_record(args.checkpoint),
                            note=args.note)
        held = sorted((k for k, v in entry["book"].items() if v["holds"]),
                      key=lambda k: int(k[1:]))
        print(f"{args.record}: book scoreboard {len(held)} of {len(entry['book'])} hold "
              f"({' '.join(held)})")
        return
    if args.from_json is not None:
        out, record = results_from_json(args.from_json), read_record(args.checkpoint)
        if out["fingerprint"] != record_fingerprint(record):
            measured = out["fingerprint"] or "an unnamed model"
            raise InputError(f"{args.from_json} measured {measured}, not {args.checkpoint} "
                             f"(sha256 {record['sha256'][:16]}…)")
        record_history(args.record, args.note, record, out)
        held = out["claims"][out["claims"].holds == "yes"].id.tolist()
        print(f"{args.record}: diagnostic {len(held)} of {len(out['claims'])} hold "
              f"({' '.join(held)}), from {args.from_json}")
        return
    torch.set_num_threads(args.threads)
    loaded, record = load_checkpoint(args.checkpoint)
    world = args.world or world_of(record)
    out = run(loaded, world, reference_size=args.reference_size, shift_size=args.shift_size,
              probe_size=args.probe_size, val_size=args.val_size,
              random_seeds=args.random_seeds, n_texts=args.n_texts,
              dictionary=args.dictionary, seed=args.seed)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 120)
    print(f"\n== {args.checkpoint} ({loaded.fingerprint}), world {world}")
    zs = out["zero_shot"]
    own = zs[~zs.target.isna()]
    print("\nzero-shot on the training distribution (test split):")
    print(own.to_string(index=False, float_format="{:.3f}".format))
    short = own[own.zero_shot < own.target]
    print(f"tasks below target: {', '.join(short.task) if len(short) else 'none'}")
    down = zs[zs.target.isna()]
    print(f"\ndownstream tasks ({len(down)}): mean zero-shot {down.zero_shot.mean():.3f}")
    ids = out["ids"]
    print("\nheads per layer (mean ± SE over heads): linear ID, TwoNN, ratio")
    n = ids[ids.kind == "head"].groupby("layer").size()
    for col in ("linear_id", "twonn", "ratio"):
        prof = depth_profile(ids, col)
        print(f"  {col:>9}: " + "  ".join(
            f"L{i} {m:.2f}±{s / math.sqrt(n[i]):.2f}"
            for i, m, s in zip(prof.index, prof["mean"], prof["std"], strict=True)))
    print("\nbest probe unit per attribute:")
    print(out["best_units"].to_string(index=False, float_format="{:.3f}".format))
    print("\nmedian head similarity to the reference subspace:")
    print(out["similarity"].to_string(float_format="{:.3f}".format))
    truth = out["truth"]
    print("\nTextSpan's first texts for each attribute's best-probe head (chapter 03):")
    print(truth[["attribute", "head", "probe_acc", "top_texts", "names_family"]].to_string(
        index=False, float_format="{:.3f}".format))
    print("\nmean zero-shot with the first n layers' heads mean-ablated, per ablation mean "
          "(chapter 04):")
    print(out["ablation_means"].to_string(float_format="{:.3f}".format))
    print("\ncoarse selection, test accuracy at the k chosen on validation (chapter 04):")
    sel = out["selection"]
    ks = [c for c in sel.columns if c.endswith(" k")]
    print(sel.astype({c: int for c in ks}).to_string(float_format="{:.3f}".format))
    print("\ntime per part: " + ", ".join(f"{k} {v:.1f}s" for k, v in out["timings"].items()))
    claims = out["claims"]
    print(f"\nclaims ({int((claims.holds == 'yes').sum())} of {len(claims)} hold), "
          f"{out['wall_s'] / 60:.1f} min:")
    print(claims[["id", "measured", "criterion", "holds"]].to_string(index=False))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "checkpoint": str(args.checkpoint), "fingerprint": loaded.fingerprint,
            "world": world, "claims": claims.to_dict("records"),
            "zero_shot": zs.to_dict("records"), "ids": ids.to_dict("records"),
            "best_units": out["best_units"].to_dict("records"),
            "similarity": out["similarity"].to_dict(), "truth": truth.to_dict("records"),
            "tasks": out["tasks"].to_dict("records"), "timings": out["timings"],
            "wall_s": out["wall_s"],
        }, indent=1, default=float))
    if args.record:
        record_history(args.record, args.note, record, out)


if __name__ == "__main__":
    raise SystemExit(main())
