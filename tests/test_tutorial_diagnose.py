"""The checkpoint diagnostic (runner.diagnose): its ID table against planted dimensions, that
claims come only from analysis.claims, and one quick end-to-end run on a small random model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from residual_core.analysis import claims as C
from residual_core.core.units import UnitLayout, Units
from residual_core.runner import diagnose as G
from residual_core.tutorial import world as W


def test_zero_shot_target():
    assert G.zero_shot_target(2) == pytest.approx(0.75)
    assert G.zero_shot_target(4) == pytest.approx(0.5)


def test_id_table_recovers_planted_dimensions(loaded):
    from residual_core.core.decompose import check_supported

    lay: UnitLayout = check_supported(loaded.model)
    labels = list(lay.labels)
    dims = [1 + (i % 5) for i in range(len(labels))]
    gen = torch.Generator().manual_seed(0)
    d_out = 16
    cols = []
    for k in dims:
        basis = torch.linalg.qr(torch.randn(d_out, k, generator=gen, dtype=torch.float64))[0]
        cols.append(torch.rand(3000, k, generator=gen, dtype=torch.float64) @ basis.T)
    units = Units(torch.stack(cols, 1).float(), tuple(labels), lay)
    table = G.id_table(units, seed=0)
    assert table.unit.tolist() == labels
    assert table.linear_id.tolist() == dims
    assert ((table.twonn - pd.Series(dims)).abs() <= 0.25 * pd.Series(dims) + 0.3).all()


def test_diagnostic_decides_claims_only_through_analysis_claims():
    source = open(G.__file__).read()
    assert "C.id_claims(" in source and "C.stability_claims(" in source
    assert "C.alignment_claims(" in source and "C.specialization_claims(" in source
    assert "C.residual_claims(" not in source  # C12-C14 are chapter 05's (see --help)
    for threshold in ("0.5 * d_head", "0.25 * d_head", "<= 0.02", "p < 0.05"):
        assert threshold not in source  # no criterion of its own


def test_quick_run_end_to_end(loaded):
    out = G.run(loaded, "v1", reference_size=120, shift_size=60, probe_size=60, val_size=40,
                twonn_points=120, n_texts=3, random_seeds=2, log=lambda *_: None)
    claims = out["claims"]
    assert list(claims.columns) == list(C.COLUMNS)
    assert claims.id.tolist() == [f"C{i}" for i in range(1, 12)]
    assert set(claims.holds) <= {"yes", "no"}
    assert all(claims.criterion[i] == C.CLAIMS[c].criterion for i, c in enumerate(claims.id))
    assert set(out["zero_shot"].task) >= {f"world.{a}" for a in W.ATTRIBUTES}
    assert out["ids"].shape[0] == len(out["probes"]) - 1  # every unit, no embedding
    assert set(out["similarity"].index) == {"world", *W.SHIFTS}
    assert set(out["truth"].attribute) == set(W.ATTRIBUTES)  # chapter 03's table, every attribute
    assert set(out["tasks"].task) == set(out["selection"].index)  # chapter 04's, every task
    assert list(out["ablation_means"].index) == ["evaluated", "reference"]
    assert {"TextSpan and probe views (C7-C8)",
            "layer ablation, coarse selection, task table (C9-C11)"} <= set(out["timings"])
    entry = G.history_entry("t", "note", {"model_cfg": {"vision_cfg": {
        "layers": 2, "width": 32, "head_width": 16, "mlp_ratio": 4.0}}, "metadata": {},
        "sha256": "0" * 64}, out, "abc")
    assert entry["world"] == "v1" and set(entry["claims"]) == set(claims.id)


def test_history_is_kept_and_cli_has_help():
    import json

    entries = json.loads(G.HISTORY_PATH.read_text())
    assert {"baseline"} <= {e["name"] for e in entries}
    res = subprocess.run([sys.executable, "-m", "residual_core.runner.diagnose", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--checkpoint" in res.stdout and "--record" in res.stdout
    assert "C12-C14" in res.stdout and "--val-size" in res.stdout


def test_book_scoreboard_is_attached_to_its_entry(tmp_path):
    import json

    from residual_core.core.errors import InputError

    history = tmp_path / "prototypes.json"
    history.write_text(json.dumps([{"name": "P9", "claims": {}}, {"name": "other"}]))
    book = tmp_path / "executed"
    book.mkdir()
    # two chapters' tables, with planted answers: C1 holds, C12 does not
    C.write_claims(C._table([C._row("C1", "planted 1", True)]), book / "01-t.results.csv")
    C.write_claims(C._table([C._row("C12", "planted 12", False)]), book / "05-t.results.csv")
    G.attach_book("P9", book, history)
    entries = json.loads(history.read_text())
    assert entries[0]["book"] == {"C1": {"holds": True, "measured": "planted 1"},
                                  "C12": {"holds": False, "measured": "planted 12"}}
    assert "book" not in entries[1]
    with pytest.raises(InputError, match="'P8'.*P9, other"):
        G.attach_book("P8", book, history)
    # a new entry is made from a checkpoint's record
    record = {"model_cfg": {"vision_cfg": {"layers": 8, "width": 192, "head_width": 32,
                                           "mlp_ratio": 2.0, "patch_size": 16}},
              "metadata": {"world_name": "v2", "command": "train --world v2", "steps_done": 9},
              "sha256": "ab"}
    new = G.attach_book("P8", book, history, record=record, note="planted")
    assert new["model"] == "8 layers, 6 heads of 32, width 192, MLP x2, patch 16"
    assert new["world"] == "v2"
    assert new["steps"] == 9 and new["note"] == "planted" and new["book"]["C1"]["holds"]
    assert [e["name"] for e in json.loads(history.read_text())] == ["P9", "other", "P8"]
    with pytest.raises(InputError, match="no \\*.claims.csv"):
        G.attach_book("P9", tmp_path / "nowhere", history)
    assert G.main(["--record", "P8", "--book", str(tmp_path / "nowhere")]) == 2  # no traceback


def test_the_diagnostic_encodes_at_the_models_input_size(loaded):
    """A model trained on resized renders is diagnosed on the pixels the chapters give it."""
    import dataclasses

    from PIL import Image

    from residual_core.core.decompose import decompose
    from residual_core.data.registry import load_dataset
    from residual_core.tutorial.model import build_tiny_clip, preprocess_transform, tiny_clip_config

    torch.manual_seed(0)
    cfg = tiny_clip_config(loaded.tokenizer.vocab_size, 32)
    cfg["vision_cfg"].update(layers=2, width=32, head_width=16, image_size=48)
    cfg["text_cfg"].update(layers=1, width=32, heads=2)
    cfg["embed_dim"] = 16
    small = dataclasses.replace(loaded, model=build_tiny_clip(cfg).eval(),
                                preprocess=preprocess_transform(48))
    encoded = G.encode(small, "world.reference", "train", 6, batch_size=4)
    images = load_dataset("world.reference", "train", size=6).images
    x = torch.stack([small.preprocess(Image.fromarray(im)) for im in images])
    assert x.shape[-1] == 48
    with torch.no_grad():
        torch.testing.assert_close(encoded.units.data, decompose(small.model, x).data)


def test_recording_from_json_keeps_the_book_and_checks_the_model(tmp_path, monkeypatch):
    import json

    from residual_core.tutorial.model import CHECKPOINT_PATH, read_record

    sha = read_record(CHECKPOINT_PATH)["sha256"]
    history = tmp_path / "prototypes.json"
    book = {"C12": {"holds": True, "measured": "planted"}}
    history.write_text(json.dumps([{"name": "P9", "sha256": sha, "book": book}]))
    monkeypatch.setattr(G, "HISTORY_PATH", history)
    # planted results, as --json writes them: C1 holds, C3 does not; two layers of two heads
    results = {"fingerprint": f"tutorial-{sha[:16]}",
               "claims": [{"id": "C1", "holds": "yes", "measured": "planted 1"},
                          {"id": "C3", "holds": "no", "measured": "planted 3"}],
               "zero_shot": [{"task": "world.color", "zero_shot": 0.9, "target": 0.33},
                             {"task": "world.shape", "zero_shot": 0.1, "target": 0.4}],
               "ids": [{"kind": "head", "layer": la, "twonn": t}
                       for la, t in ((0, 4.0), (0, 6.0), (1, 3.0), (1, 3.0))]}
    found = tmp_path / "d.json"
    found.write_text(json.dumps(results))
    assert G.main(["--record", "P9", "--from-json", str(found)]) == 0
    (entry,) = json.loads(history.read_text())
    assert entry["claims"] == {"C1": {"holds": True, "measured": "planted 1"},
                               "C3": {"holds": False, "measured": "planted 3"}}
    assert entry["book"] == book and entry["below_target"] == ["world.shape"]
    assert entry["twonn_per_layer"] == [5.0, 3.0]
    # results of another model are refused, naming both
    found.write_text(json.dumps({**results, "fingerprint": "tutorial-0000000000000000"}))
    assert G.main(["--record", "P9", "--from-json", str(found)]) == 2
    assert json.loads(history.read_text()) == [entry]


def test_nuisance_profile_script_switches_off_only_its_group():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "id_profile_by_nuisance.py"
    spec = importlib.util.spec_from_file_location("id_profile_by_nuisance", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    v = script.variants()
    base = W.NUISANCE_WORLD
    assert v["v2"] == base and v["no-nuisance"] == base.without_nuisance()
    assert v["no-pixel-noise"] == base.replace(noise_std=0.0)
    photometric = v["no-photometric"]
    assert (photometric.noise_std, photometric.specks, photometric.grating_amplitude) == (0, 0, 0)
    assert (photometric.rotation, photometric.scale_jitter) == (base.rotation, base.scale_jitter)
    geometric = v["no-geometric"]
    assert geometric.rotation == 0 and geometric.y_range[0] == geometric.y_range[1]
    assert geometric.noise_std == base.noise_std
    from residual_core.tutorial.model import CHECKPOINT_PATH

    loaded, record = G.load_checkpoint(CHECKPOINT_PATH)
    heads = script.head_units(loaded, base, 6)
    layout = record["model_cfg"]["vision_cfg"]
    n_heads = layout["layers"] * layout["width"] // layout["head_width"]
    assert heads.data.shape[:2] == (6, n_heads) and all(h.startswith("L") for h in heads.labels)


def test_grey_similarity_script_makes_luma_copies():
    """Greyscale copies carry ITU-R 601 luma in all three channels (hand-computed values)."""
    import importlib.util

    import numpy as np

    path = Path(__file__).parents[1] / "scripts" / "grey_similarity.py"
    spec = importlib.util.spec_from_file_location("grey_similarity", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    pixels = np.array([[[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]]], np.uint8)
    out = script.grey(pixels)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    # 0.299·255 = 76.2, 0.587·255 = 149.7, 0.114·255 = 29.1, white stays 255
    assert out[0, 0, :, 0].tolist() == [76, 150, 29, 255]
    assert (out == out[..., :1]).all()
