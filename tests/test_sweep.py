"""Sweeps: the grid, claims on a shared folder, two workers, resuming after partial or killed pairs.

The notebook fixture logs every execution (pair and kernel pid) to a file before it writes its
results, so "every pair ran exactly once" is read from that log, not from the sweep's own
bookkeeping.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from test_runner import write_notebook  # one jupytext fixture writer for both test files

from residual_core import runner
from residual_core import sweep as sw

ROOT = Path(__file__).resolve().parent.parent
@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "01_tiny.py",
        """
        # %% tags=["parameters"]
        model = "a"
        tasks = ["x"]
        log = ""
        results_file = None
        """,
        """
        # %%
        import os
        import time

        with open(log, "a") as f:
            f.write(f"{model},{tasks[0]},{os.getpid()}\\n")
        time.sleep(float(os.environ.get("TINY_DELAY", "0")))
        with open(results_file, "w") as f:
            f.write(f"model,task,score\\n{model},{tasks[0]},{len(model) + len(tasks[0])}\\n")
        """,
    )


def make_sweep(tiny: Path, tmp_path: Path) -> sw.Sweep:
    return sw.Sweep(tiny, "t", {"log": str(tmp_path / "log.txt")},
                    {"model": ["a", "bb"], "tasks": ["x", "yy"]}, tmp_path / "out")


def executions(tmp_path: Path) -> Counter:
    log = tmp_path / "log.txt"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(tuple(line.split(",")[:2]) for line in lines)


def test_expand_wraps_list_parameters_and_names_pairs(tiny: Path, tmp_path: Path):
    pairs = make_sweep(tiny, tmp_path).pairs()
    assert [p.axes for p in pairs] == [{"model": m, "tasks": t}
                                       for m in ["a", "bb"] for t in ["x", "yy"]]
    assert pairs[0].overrides == {"log": str(tmp_path / "log.txt"), "model": "a", "tasks": ["x"]}
    assert len({p.id for p in pairs}) == 4
    assert all(re.fullmatch(r"[\w.-]+", p.id) for p in pairs)
    other = sw.expand(tiny, {"log": "elsewhere"}, {"model": ["a"], "tasks": ["x"]}, "t")
    assert other[0].id != pairs[0].id, "changed base parameters must not reuse finished pairs"


def test_expand_rejects_unknown_axis(tiny: Path):
    with pytest.raises(runner.ParameterError, match="unknown parameter"):
        sw.expand(tiny, {}, {"modle": ["a"]})


def test_parse_axes():
    assert sw.parse_axes(["model=openclip_b,clip_b", "seed=0,1", "tasks=[['a', 'b']]"]) == {
        "model": ["openclip_b", "clip_b"], "seed": [0, 1], "tasks": [["a", "b"]]}
    with pytest.raises(runner.ParameterError, match="name=v1"):
        sw.parse_axes(["model"])


def _race(path: str) -> bool:
    return sw.claim(Path(path), {"pid": os.getpid()})


def test_claim_is_exclusive_across_processes(tmp_path: Path):
    path = tmp_path / "claims" / "p.claim"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        won = pool.map(_race, [str(path)] * 8)
    assert sum(won) == 1
    assert json.loads(path.read_text())["pid"] != os.getpid()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_claims(tmp_path: Path):
    live, dead, foreign, old = (tmp_path / f"{n}.claim" for n in ["live", "dead", "far", "old"])
    sw.claim(live, {"host": sw.HOST, "pid": os.getpid()})
    sw.claim(dead, {"host": sw.HOST, "pid": dead_pid()})
    sw.claim(foreign, {"host": "elsewhere", "pid": 1})
    sw.claim(old, {"host": "elsewhere", "pid": 1})
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert not sw.claim_is_stale(live, 600)
    assert sw.claim_is_stale(dead, 600)
    assert not sw.claim_is_stale(foreign, 600)  # another machine, heartbeat fresh
    assert sw.claim_is_stale(old, 600)
    assert not sw.break_stale(live, 600) and live.exists()
    assert sw.break_stale(dead, 600) and not dead.exists()
    assert sw.break_stale(old, 600) and not old.exists()


def test_two_workers_run_every_pair_once_merge_and_skip(tiny: Path, tmp_path: Path,
                                                       monkeypatch):
    monkeypatch.setenv("TINY_DELAY", "0.5")
    sweep = make_sweep(tiny, tmp_path)
    final, merged = sw.run_sweep(sweep, workers=2, gpus=[], poll=0.2)
    grid = {(m, t) for m in ["a", "bb"] for t in ["x", "yy"]}
    assert executions(tmp_path) == Counter(grid), "every pair exactly once"
    assert len(final.done) == 4 and not final.failed
    assert len(merged) == 4
    assert set(zip(merged.sweep_model, merged.sweep_tasks, strict=True)) == grid
    assert (merged.score == merged.model.str.len() + merged.task.str.len()).all()
    assert pd.read_csv(sweep.merged_path()).equals(merged)
    assert not list((sweep.folder / "claims").glob("*.claim")), "claims are released"

    # a rerun skips everything
    final, merged = sw.run_sweep(sweep, workers=2, gpus=[], poll=0.2)
    assert executions(tmp_path) == Counter(grid)
    assert len(final.done) == 4 and len(merged) == 4

    # partial pairs are redone, once each: a table without record and a dead worker's claim;
    # a truncated record; a claim of another machine whose heartbeat stopped long ago
    a_x, a_yy, bb_x, bb_yy = sweep.pairs()
    sweep.record(a_x).unlink()
    sw.claim(sweep.claim_path(a_x), {"host": sw.HOST, "pid": dead_pid()})
    text = sweep.record(a_yy).read_text()
    sweep.record(a_yy).write_text(text[: len(text) // 2])
    sweep.record(bb_x).unlink()
    sw.claim(sweep.claim_path(bb_x), {"host": "gone", "pid": 1})
    os.utime(sweep.claim_path(bb_x), (time.time() - 3600, time.time() - 3600))
    final, merged = sw.run_sweep(sweep, workers=2, gpus=[], poll=0.2, stale_after=60)
    assert executions(tmp_path) == Counter(grid) + Counter([("a", "x"), ("a", "yy"),
                                                            ("bb", "x")])
    assert len(final.done) == 4 and len(merged) == 4


def test_failing_pair_is_marked_and_not_retried_in_the_session(tmp_path: Path):
    nb = write_notebook(
        tmp_path / "02_fail.py",
        '# %% tags=["parameters"]\nn = 1\nresults_file = None',
        "# %%\nassert n != 2, 'two fails'\nopen(results_file, 'w').write(f'n\\n{n}\\n')",
    )
    sweep = sw.Sweep(nb, "t", {}, {"n": [1, 2]}, tmp_path / "out")
    final, merged = sw.run_sweep(sweep, workers=1, gpus=[], poll=0.2)
    assert [p.axes for p in final.done] == [{"n": 1}]
    (failed_id, mark), = final.failed.items()
    assert "two fails" in mark["error"]
    assert merged.n.tolist() == [1]


def test_killed_sweep_resumes(tiny: Path, tmp_path: Path):
    """kill -9 of the whole sweep mid-pair: the next sweep redoes that pair, skips the rest."""
    out, log = tmp_path / "out", tmp_path / "log.txt"
    cmd = [sys.executable, "-m", "residual_core.runner", "sweep", str(tiny), "--param",
           f"log={log}", "--axis", "model=a", "--axis", "tasks=x,yy", "--out", str(out),
           "--gpus", "none"]
    env = {**os.environ, "TINY_DELAY": "60"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not (log.exists() and log.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        assert log.exists(), "the sweep never started a pair"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (claimed,) = list((out / "01_tiny" / "claims").glob("*.claim"))  # left by the dead worker
    assert not list((out / "01_tiny").glob("*.results.json"))
    env["TINY_DELAY"] = "0"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert executions(tmp_path) == Counter({("a", "x"): 2, ("a", "yy"): 1})
    assert len(pd.read_csv(out / "01_tiny-tutorial.sweep.csv")) == 2
    assert not claimed.exists()
