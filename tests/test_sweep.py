"""Sweeps: the grid, the local pool, submitit arrays (local processes, SLURM script), resuming.

The notebook fixture logs every execution (pair, kernel pid, CUDA_VISIBLE_DEVICES,
RESIDUAL_CACHE) to a file before it writes its results, so "every pair ran exactly once" is read
from that log, not from the sweep's own bookkeeping. A pair can be told to kill the process that
runs it (a worker of the local pool, a submitit task) after writing its table, once: a job
killed mid-run.
"""

from __future__ import annotations

import json
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

from residual_core.runner import chapters, cli, records
from residual_core.runner import sweep as sw

# Sweeps are submitted from a cluster's login node: a machine without submitit (the GPU suite's)
# skips this file instead of failing the collection of every other test.
submitit = pytest.importorskip("submitit")
DelayedSubmission = pytest.importorskip("submitit.core.utils").DelayedSubmission

ROOT = Path(__file__).resolve().parent.parent
GRID = {(m, t) for m in ["a", "bb"] for t in ["x", "yy"]}


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # submitit's task processes import this tree
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
        import signal
        import time

        env = [os.environ.get(k, "-") for k in ("CUDA_VISIBLE_DEVICES", "RESIDUAL_CACHE")]
        with open(log, "a") as f:
            f.write(f"{model},{tasks[0]},{os.getpid()},{env[0]},{env[1]}\\n")
        time.sleep(float(os.environ.get("TINY_DELAY", "0")))
        with open(results_file, "w") as f:
            f.write(f"model,task,score\\n{model},{tasks[0]},{len(model) + len(tasks[0])}\\n")
        kill = os.path.join(os.path.dirname(log), f"kill-{model}-{tasks[0]}")
        if os.path.exists(kill):  # once: kill the process running this pair, table written
            os.remove(kill)
            os.kill(os.getppid(), signal.SIGKILL)
            os._exit(0)
        """,
    )


def make_sweep(tiny: Path, tmp_path: Path) -> sw.Sweep:
    return sw.Sweep(tiny, "t", {"log": str(tmp_path / "log.txt")},
                    {"model": ["a", "bb"], "tasks": ["x", "yy"]}, tmp_path / "out")


def log_lines(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "log.txt"
    return [line.split(",") for line in log.read_text().splitlines()] if log.exists() else []


def executions(tmp_path: Path) -> Counter:
    return Counter((line[0], line[1]) for line in log_lines(tmp_path))


def check_merged(sweep: sw.Sweep, merged: pd.DataFrame, grid: set = GRID) -> None:
    assert len(merged) == len(grid)
    assert set(zip(merged.sweep_model, merged.sweep_tasks, strict=True)) == grid
    assert (merged.score == merged.model.str.len() + merged.task.str.len()).all()
    assert (merged.sweep_model == merged.model).all() and (merged.sweep_tasks == merged.task).all()
    assert pd.read_csv(sweep.merged_path()).equals(merged)


def local_executor(sweep: sw.Sweep) -> submitit.LocalExecutor:
    executor = submitit.LocalExecutor(folder=sweep.log_folder / "%j")
    executor.update_parameters(timeout_min=10)
    return executor


# --------------------------------------------------------------------------------------------
# The grid


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
    with pytest.raises(chapters.ParameterError, match="unknown parameter"):
        sw.expand(tiny, {}, {"modle": ["a"]})


def test_parse_axes():
    assert sw.parse_axes(["model=openclip_b,clip_b", "seed=0,1", "tasks=[['a', 'b']]"]) == {
        "model": ["openclip_b", "clip_b"], "seed": [0, 1], "tasks": [["a", "b"]]}
    with pytest.raises(chapters.ParameterError, match="name=v1"):
        sw.parse_axes(["model"])


# --------------------------------------------------------------------------------------------
# --executor local: a pool of worker processes


def test_local_pool_runs_every_pair_once_merges_and_skips(tiny: Path, tmp_path: Path,
                                                          monkeypatch):
    monkeypatch.setenv("TINY_DELAY", "0.5")
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "cache"))
    sweep = make_sweep(tiny, tmp_path)
    final, merged = sw.run_local(sweep, workers=2, gpus=["5", "7"])
    assert executions(tmp_path) == Counter(GRID), "every pair exactly once"
    assert len(final.done) == 4 and not final.pending and not final.failed
    check_merged(sweep, merged)
    seen = {(line[3], line[4]) for line in log_lines(tmp_path)}
    assert seen and seen <= {("5", str(tmp_path / "cache" / "sweep-w0")),
                             ("7", str(tmp_path / "cache" / "sweep-w1"))}, seen
    # nothing on disk coordinates the workers: the folder holds the pairs' outputs only
    names = {re.sub(r"^01_tiny-.*?(\.results)?\.(ipynb|csv|json)$", r"\1.\2", p.name)
             for p in sweep.folder.iterdir()}
    assert names == {".ipynb", ".results.csv", ".results.json"}, names

    # a rerun skips everything
    final, merged = sw.run_local(sweep, workers=2, gpus=[])
    assert executions(tmp_path) == Counter(GRID)
    assert len(final.done) == 4 and len(merged) == 4

    # unfinished pairs are redone, once each: a table without its record, a truncated record
    a_x, a_yy, _, _ = sweep.pairs()
    sweep.record(a_x).unlink()
    text = sweep.record(a_yy).read_text()
    sweep.record(a_yy).write_text(text[: len(text) // 2])
    final, merged = sw.run_local(sweep, workers=2, gpus=[])
    assert executions(tmp_path) == Counter(GRID) + Counter([("a", "x"), ("a", "yy")])
    assert len(final.done) == 4
    check_merged(sweep, merged)


def test_local_pool_survives_a_failing_pair_and_a_killed_worker(tiny: Path, tmp_path: Path):
    """A pair that raises is reported with a note, one whose worker is killed leaves no record;
    the other pairs still run, and the next sweep retries exactly those two."""
    nb = write_notebook(
        tmp_path / "02_fail.py",
        '# %% tags=["parameters"]\nn = 1\nresults_file = None',
        f"""
        # %%
        import os
        assert not (n == 2 and os.path.exists({str(tmp_path / "fail")!r})), "two fails"
        open(results_file, "w").write(f"n\\n{{n}}\\n")
        if n == 3 and os.path.exists({str(tmp_path / "kill")!r}):
            os.remove({str(tmp_path / "kill")!r})
            os.kill(os.getppid(), 9)
            os._exit(0)
        """,
    )
    (tmp_path / "fail").touch()
    (tmp_path / "kill").touch()
    sweep = sw.Sweep(nb, "t", {}, {"n": [1, 2, 3, 4]}, tmp_path / "out")
    final, merged = sw.run_local(sweep, workers=2, gpus=[])
    p1, p2, p3, p4 = sweep.pairs()
    assert [p.id for p in final.done] == [p1.id, p4.id]
    assert [p.id for p in final.pending] == [p2.id, p3.id]
    assert "two fails" in final.failed[p2.id]["error"], "the failure note says why"
    assert p3.id not in final.failed, "a killed job leaves no note, only no record"
    assert merged.n.tolist() == [1, 4]

    (tmp_path / "fail").unlink()
    final, merged = sw.run_local(sweep, workers=1, gpus=[])
    assert len(final.done) == 4 and not final.failed
    assert not sweep.failure_path(p2).exists()
    assert merged.n.tolist() == [1, 2, 3, 4]


def test_killed_sweep_resumes(tiny: Path, tmp_path: Path):
    """kill -9 of the whole local sweep mid-pair: the next sweep redoes that pair only."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "residual_core.runner", "sweep", str(tiny), "--param",
           f"log={tmp_path / 'log.txt'}", "--axis", "model=a", "--axis", "tasks=x,yy",
           "--out", str(out), "--gpus", "none"]
    env = {**os.environ, "TINY_DELAY": "60"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not executions(tmp_path) and time.time() < deadline:
            time.sleep(0.2)
        assert executions(tmp_path), "the sweep never started a pair"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list((out / "01_tiny").glob("*.results.json"))
    env["TINY_DELAY"] = "0"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert executions(tmp_path) == Counter({("a", "x"): 2, ("a", "yy"): 1})
    assert len(pd.read_csv(out / "01_tiny-tutorial.sweep.csv")) == 2


# --------------------------------------------------------------------------------------------
# --executor slurm: the code path through submitit, run by its local executor


def test_submitit_array_killed_task_and_resubmission(tiny: Path, tmp_path: Path, monkeypatch,
                                                     capsys):
    # submitit waits 15 s for a result file that a slow network filesystem may not show yet
    monkeypatch.setattr(submitit.LocalJob, "_results_timeout_s", 1)
    sweep = sw.Sweep(tiny, "t", {"log": str(tmp_path / "log.txt")},
                     {"model": ["a"], "tasks": ["x", "yy"]}, tmp_path / "out")
    a_x, a_yy = sweep.pairs()
    (tmp_path / "kill-a-yy").touch()
    todo, jobs = sw.submit(sweep, local_executor(sweep))
    assert [t["pair"] for t in todo] == [a_x.id, a_yy.id]
    final, merged = sw.wait(sweep, todo, jobs, poll=0.5)
    assert [p.id for p in final.pending] == [a_yy.id], "the killed task left no record"
    table = sweep.folder / f"01_tiny-{a_yy.id}.results.csv"
    assert not table.exists(), "a killed task's table is never put in place"
    assert list(sweep.folder.glob(f".{table.name}.*.partial.csv")), "it was written aside"
    assert merged.sweep_pair.tolist() == [a_x.id]
    assert f"{a_yy.id} FAILED" in capsys.readouterr().out
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        jobs[1].result()
    assert jobs[0].result() == str(sweep.record(a_x))
    assert f"done {a_x.id}" in jobs[0].stdout(), "each task logs into its own file"
    assert f"start {a_yy.id}" in jobs[1].stdout() and "done" not in jobs[1].stdout()
    table = json.loads((sweep.log_folder / f"{jobs[0].job_id}.tasks.json").read_text())
    assert [row["pair"] for row in table] == [a_x.id, a_yy.id]

    # the re-submission runs only the unfinished pair
    todo, jobs = sw.submit(sweep, local_executor(sweep))
    assert [t["pair"] for t in todo] == [a_yy.id]
    final, merged = sw.wait(sweep, todo, jobs, poll=0.5)
    assert len(final.done) == 2
    assert executions(tmp_path) == Counter({("a", "x"): 1, ("a", "yy"): 2})
    check_merged(sweep, merged, {("a", "x"), ("a", "yy")})
    assert sw.submit(sweep, local_executor(sweep)) == ([], []), "nothing left to submit"


SMOKE = {
    "00_units": ({"n_images": 2}, {"seed": [0, 1]}),
    "05_residual": ({"variants": ["zero-shot", "residual-full"], "train_size": 32,
                     "val_size": 16, "test_size": 16, "reference_size": 64, "max_epochs": 1,
                     "probe_headroom": False, "default_task": "world_clutter.color"},
                    {"tasks": ["world_clutter.color", "world_sketch.shape"]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("stem", list(SMOKE))
def test_submitit_array_runs_chapter_smoke_grid(stem: str, tmp_path: Path, monkeypatch):
    """Two smoke runs of a real chapter as a submitit array: records, tables and the merge."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "cache"))
    base, axes = SMOKE[stem]
    sweep = sw.Sweep(chapters.find_chapter(stem), "tutorial", base, axes, tmp_path / "out")
    todo, jobs = sw.submit(sweep, local_executor(sweep))
    final, merged = sw.wait(sweep, todo, jobs, poll=1.0)
    assert len(final.done) == 2, [job.stdout() for job in jobs]
    (axis, values), = axes.items()
    for pair, value in zip(sweep.pairs(), values, strict=True):
        record = records.read_record(sweep.record(pair))
        assert record["parameters"][axis] == (value if axis != "tasks" else [value])
        rows = merged[merged.sweep_pair == pair.id]
        assert len(rows) == record["rows"] > 0
        assert (rows[f"sweep_{axis}"] == str(value)).all()
    if stem == "05_residual":
        assert set(merged.dataset) == set(axes["tasks"])  # each pair trained on its own task
        assert set(merged.variant) == set(base["variants"])


# --------------------------------------------------------------------------------------------
# --executor slurm: the script, and what a submission hands to SLURM


OPTIONS = sw.SlurmOptions(partition="gpu-h100", gpus_per_task=2, cpus_per_task=12, mem_gb=32.5,
                          time_min=90, array_parallelism=2,
                          sbatch={"account": "proj42", "exclusive": True, "cpus-per-task": 16},
                          setup=["module load cuda/12.4", "export RESIDUAL_CACHE=/scratch/c"])


def test_sbatch_script_for_given_options(tiny: Path, tmp_path: Path):
    sweep = make_sweep(tiny, tmp_path)
    script = sw.sbatch_script(sweep, OPTIONS, 3)
    flags = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    logs = f"{sweep.log_folder}/%A_%a/%A_%a_0_log.out"
    for want in ["--partition=gpu-h100", "--gpus-per-node=2", "--cpus-per-task=16",
                 "--mem=33280MB", "--time=90", "--array=0-2%2", "--account=proj42",
                 "--exclusive", f"--chdir={ROOT}", f"--job-name={sweep.job_name}",
                 f"--output={logs}"]:
        assert f"#SBATCH {want}" in flags, (want, flags)
    assert sum(f.startswith("#SBATCH --cpus-per-task") for f in flags) == 1, "--sbatch overrides"
    assert not any(f.startswith("#SBATCH --error") for f in flags), "one log per task"
    body = script.split("# setup\n", 1)[1]
    assert body.index("module load cuda/12.4") < body.index("export RESIDUAL_CACHE=/scratch/c") \
        < body.index("-m submitit.core._submit")
    assert f"{sys.executable} -u -m submitit.core._submit {sweep.log_folder}/%j" in body

    single = sw.sbatch_script(sweep, sw.SlurmOptions(), 1)
    assert "--array" not in single and "--partition" not in single
    assert "#SBATCH --gpus-per-node=1" in single and "#SBATCH --time=1440" in single
    assert "#SBATCH --mem=64GB" in single and "# setup" not in single
    with pytest.raises(chapters.ParameterError, match="cpus_per_task must be at least 1, got 0"):
        sw.sbatch_script(sweep, sw.SlurmOptions(cpus_per_task=0), 2)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch) -> Path:
    """``srun``, ``sbatch`` (keeps the script, answers job 4242) and ``squeue`` on the PATH."""
    bin_dir, state = tmp_path / "fake-bin", tmp_path / "fake-slurm"
    bin_dir.mkdir()
    state.mkdir()
    scripts = {
        "srun": "exit 0",
        "sbatch": f'n=$(ls {state} | grep -c submitted); cp "$1" {state}/submitted-$n.sh\n'
                  'echo "Submitted batch job 4242"',
        "squeue": f'echo "$@" > {state}/squeue-args; cat {state}/queue 2>/dev/null; exit 0',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return state


def slurm_cli(tiny: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["sweep", str(tiny), "--preset", "tutorial", "--param", f"log={tmp_path / 'log.txt'}",
            "--axis", "model=a,bb", "--axis", "tasks=x,yy", "--out", str(tmp_path / "out"),
            "--executor", "slurm", "--partition", "gpu-h100", "--gpus-per-task", "2",
            "--cpus-per-task", "12", "--mem-gb", "32.5", "--time-min", "90",
            "--array-parallelism", "2", "--sbatch", "account=proj42", "--sbatch", "exclusive",
            "--sbatch", "cpus-per-task=16", "--setup", "module load cuda/12.4",
            "--setup", "export RESIDUAL_CACHE=/scratch/c", *extra]


def test_slurm_submission_is_the_dry_run_script(tiny: Path, tmp_path: Path, fake_slurm: Path,
                                                capsys):
    sweep = sw.Sweep(tiny, "tutorial", {"log": str(tmp_path / "log.txt")},
                     {"model": ["a", "bb"], "tasks": ["x", "yy"]}, tmp_path / "out")
    first = sweep.pairs()[0]
    sw.run_pair(sw.make_task(sweep, first))  # finished before: not submitted
    assert cli.main(slurm_cli(tiny, tmp_path, "--dry-run")) == 0
    shown = capsys.readouterr().out
    assert not list(fake_slurm.glob("submitted-*")), "a dry run submits nothing"
    assert f"[0] {first.id}: done" in shown
    assert "3 task(s)" in shown and "2 GPU(s), 12 CPU(s), 32.5 GB, 90 min" in shown
    printed = shown.split("--- sbatch script (nothing submitted) ---\n", 1)[1]

    assert cli.main(slurm_cli(tiny, tmp_path)) == 0
    (submitted,) = fake_slurm.glob("submitted-*")
    assert submitted.read_text() == printed.rstrip("\n") + "\n" == \
        sw.sbatch_script(sweep, OPTIONS, 3).rstrip("\n") + "\n"
    assert "#SBATCH --array=0-2%2" in printed, "one task per unfinished pair"
    # each task runs run_pair on its own pair: the pickles SLURM's tasks will load
    pending = [p.id for p in sweep.pairs()[1:]]
    for i, pair in enumerate(sweep.pairs()[1:]):
        job = sweep.log_folder / f"4242_{i}"
        delayed = DelayedSubmission.load(job / f"4242_{i}_submitted.pkl")
        assert delayed.function is sw.run_pair
        assert delayed.args[0] == sw.make_task(sweep, pair)
    table = json.loads((sweep.log_folder / "4242_0.tasks.json").read_text())
    assert [row["pair"] for row in table] == pending
    assert not executions(tmp_path) - Counter([("a", "x")]), "submitting runs nothing here"

    # while SLURM still holds an array of this sweep, submitting again is refused
    (fake_slurm / "queue").write_text("4242_1\n4242_2\n")
    assert cli.main(slurm_cli(tiny, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "4242_1, 4242_2" in err and f"scancel --name {sweep.job_name}" in err
    assert (fake_slurm / "squeue-args").read_text().split() == [
        "--noheader", "--name", sweep.job_name, "--format", "%i"]
    assert len(list(fake_slurm.glob("submitted-*"))) == 1


# --------------------------------------------------------------------------------------------
# Command line: errors, one pair for another scheduler, merging


def test_cli_rejects_bad_executor_and_misplaced_flags(tiny: Path, tmp_path: Path, capsys,
                                                      monkeypatch):
    base = ["sweep", str(tiny), "--axis", "model=a", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*base, "--executor", "nope"])
    assert exit_info.value.code == 2  # every user error exits 2, argparse's too
    assert "invalid choice: 'nope' (choose from 'local', 'slurm')" in capsys.readouterr().err
    assert cli.main([*base, "--executor", "slurm", "--workers", "2"]) == 2
    assert "--workers apply to --executor local, not to --executor slurm" in \
        capsys.readouterr().err
    assert cli.main([*base, "--partition", "gpu", "--wait"]) == 2
    assert "--partition, --wait apply to --executor slurm" in capsys.readouterr().err
    assert cli.main([*base, "--pair", "1"]) == 2
    assert "--pair 1: the grid has 1 pairs (0-0)" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no srun, no sbatch
    assert cli.main([*base, "--executor", "slurm"]) == 2
    assert "sbatch and srun, which are not on the PATH" in capsys.readouterr().err


def test_cli_runs_one_pair_then_merges(tiny: Path, tmp_path: Path):
    """What another scheduler's array task runs (--pair I), then the merge (--merge)."""
    base = ["sweep", str(tiny), "--param", f"log={tmp_path / 'log.txt'}", "--axis",
            "model=a,bb", "--axis", "tasks=x", "--out", str(tmp_path / "out")]
    assert cli.main([*base, "--pair", "1"]) == 0
    assert executions(tmp_path) == Counter([("bb", "x")])
    assert cli.main([*base, "--merge"]) == 1, "not every pair is finished"
    merged = pd.read_csv(tmp_path / "out" / "01_tiny-tutorial.sweep.csv")
    assert merged[["sweep_model", "model", "score"]].values.tolist() == [["bb", "bb", 3]]
    assert cli.main([*base, "--pair", "0"]) == 0
    assert cli.main([*base, "--pair", "0"]) == 0, "a finished pair is skipped"
    assert cli.main([*base, "--merge"]) == 0
    assert executions(tmp_path) == Counter([("a", "x"), ("bb", "x")])
    merged = pd.read_csv(tmp_path / "out" / "01_tiny-tutorial.sweep.csv")
    assert merged.sweep_model.tolist() == ["a", "bb"] and merged.score.tolist() == [2, 3]
