"""The notebook runner: parameters, execution with overrides, failures and build warnings."""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

from residual_core.runner import build, chapters, cli, execute, presets, records

HEADER = """\
# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---
"""


def write_notebook(path: Path, *cells: str) -> Path:
    path.write_text(HEADER + "\n" + "\n\n".join(textwrap.dedent(c).strip() + "\n" for c in cells))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "01_tiny.py",
        """
        # %% [markdown]
        # # Tiny
        """,
        """
        # %% tags=["parameters"]
        x = 1
        label = "default"
        """,
        """
        # %%
        print(f"result={x * 2} label={label}")
        """,
    )


def cell_text(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    return "\n".join(
        "".join(out.get("text", ""))
        for cell in nb["cells"] if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
    )


def test_read_parameters(tiny: Path):
    assert chapters.read_parameters(tiny) == {"x": 1, "label": "default"}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("x = 1 + len('a')", "literal"),
        ("import os", "assignments"),
        ("a, b = 1, 2", "assignments"),
    ],
)
def test_parameters_cell_holds_literals_only(tmp_path: Path, body: str, match: str):
    nb = write_notebook(tmp_path / "bad.py", f'# %% tags=["parameters"]\n{body}')
    with pytest.raises(chapters.ParameterError, match=match):
        chapters.read_parameters(nb)


def test_parameters_cell_must_be_first_code_cell(tmp_path: Path):
    nb = write_notebook(tmp_path / "late.py", "# %%\nimport os", '# %% tags=["parameters"]\nx = 1')
    with pytest.raises(chapters.ParameterError, match="first code cell"):
        chapters.read_parameters(nb)


def test_parse_overrides():
    got = chapters.parse_overrides(["n=64", "p=None", "d=cuda", "q='x'", "layers=[0, 11]",
                                    "f=1e-3"])
    assert got == {"n": 64, "p": None, "d": "cuda", "q": "x", "layers": [0, 11], "f": 1e-3}
    with pytest.raises(chapters.ParameterError, match="key=value"):
        chapters.parse_overrides(["novalue"])


def test_execute_injects_overrides(tiny: Path, tmp_path: Path):
    result = execute.execute(tiny, "check", {"x": 21, "label": "set"}, out_dir=tmp_path / "out")
    assert result.output == tmp_path / "out" / "01_tiny-check.ipynb"
    assert "result=42 label=set" in cell_text(result.output)
    assert result.seconds > 0
    # the injected cell renders collapsed in the book, like the chapter's own parameters cell
    injected = [c for c in nbformat.read(result.output, as_version=4).cells
                if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "hide-input" in injected[0].metadata.tags


def test_unknown_parameter_is_rejected_listing_valid_ones(tiny: Path, capsys):
    code = cli.main(["run", str(tiny), "--param", "y=3", "--param", "x=2"])
    err = capsys.readouterr().err
    assert code == 2, "a user error"
    assert "unknown parameter(s) y" in err
    assert "x = 1" in err and "label = 'default'" in err


def test_string_for_numeric_parameter_is_rejected(tiny: Path):
    with pytest.raises(chapters.ParameterError, match="expects an int; got the str 'many'"):
        chapters.check_overrides(tiny, {"x": "many"})


def test_failing_notebook_exits_nonzero_naming_the_cell(tmp_path: Path, capsys):
    nb = write_notebook(
        tmp_path / "02_fails.py",
        '# %% tags=["parameters"]\nn = 1',
        "# %%\ny = n + 1",
        "# %%\nraise ValueError(f'boom {y}')",
    )
    code = cli.main(["run", str(nb), "--name", "t", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "02_fails.py" in err and "failed in code cell 3" in err
    assert "ValueError: boom 2" in err
    assert "02_fails.py:" in err  # the source line of the failing cell
    failed = tmp_path / "out" / "02_fails-t.failed.ipynb"
    assert failed.is_file() and str(failed.name) in err  # kept for the full traceback
    assert not (tmp_path / "out" / "02_fails-t.ipynb").exists(), "only a success is in place"


def test_find_chapter_by_stem_and_number(tmp_path: Path, tiny: Path):
    assert chapters.find_chapter("01_tiny", tmp_path) == tiny
    assert chapters.find_chapter("01", tmp_path) == tiny
    with pytest.raises(chapters.RunnerError, match="01_tiny"):
        chapters.find_chapter("99", tmp_path)


def test_missing_npm_gives_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    with pytest.raises(chapters.RunnerError, match="npm is needed"):
        build.ensure_widget_assets(tmp_path / "widgets")


def test_build_warning_fails_the_build(tmp_path: Path):
    (tmp_path / "_config.yml").write_text(
        "title: t\nonly_build_toc_files: true\nexecute:\n  execute_notebooks: 'off'\n"
    )
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\n")
    (tmp_path / "intro.md").write_text("# Intro\n\nA reference to {ref}`no-such-label`.\n")
    with pytest.raises(chapters.RunnerError, match="no-such-label"):
        build.build_book(tmp_path)


def test_chapters_without_named_runs_get_a_tutorial_run(tmp_path: Path, tiny: Path):
    assert presets.runs_for("tutorial", tmp_path) == [(tiny, "tutorial", {})]
    assert presets.runs_for("paper", tmp_path) == []
    with pytest.raises(chapters.ParameterError, match="'nope'; profiles: tutorial, paper"):
        presets.runs_for("nope", tmp_path)


def test_place_chapters_replaces_stale_notebooks(tmp_path: Path):
    executed = tmp_path / "executed" / "01_a-tutorial.ipynb"
    executed.parent.mkdir()
    executed.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "99_old-tutorial.ipynb").write_text("{}")
    run = records.ChapterRun(tmp_path / "01_a.py", "tutorial", output=executed)
    assert build.place_chapters([run], chapters) == [chapters / "01_a-tutorial.ipynb"]
    assert sorted(p.name for p in chapters.iterdir()) == ["01_a-tutorial.ipynb"]


def fake_claims(out: Path, stem: str, rows: list[tuple[str, str]]) -> records.ChapterRun:
    """An executed run of ``stem`` whose chapter wrote the claims ``rows`` (id, holds)."""
    from residual_core.analysis import claims

    table, _ = records.results_paths(out, stem, "tutorial")
    out.mkdir(exist_ok=True)
    table.write_text("x\n1\n")
    written = claims.write_claims(claims._table(
        [claims._row(i, f"measured {i}", holds == "yes") for i, holds in rows]), table)
    assert written == out / f"{stem}-tutorial.claims.csv"
    return records.ChapterRun(Path(f"{stem}.py"), "tutorial", output=out / f"{stem}-tutorial.ipynb",
                              results=table)


def test_the_build_writes_the_scoreboard_from_the_chapters_claims(tmp_path: Path):
    out = tmp_path / "executed"
    runs = [fake_claims(out, "01_intrinsic_dimension", [("C1", "yes"), ("C2", "no")]),
            records.ChapterRun(Path("00_units.py"), "tutorial", output=out / "00_units.ipynb"),
            fake_claims(out, "05_residual", [("C12", "no"), ("C13", "yes"), ("C14", "yes")])]
    book = tmp_path / "book"
    path = build.write_scoreboard(runs, book / "scoreboard.md", book / "chapters")
    md = path.read_text()
    assert "| [C1](chapters/01_intrinsic_dimension-tutorial.ipynb) |" in md
    assert "| [C13](chapters/05_residual-tutorial.ipynb) | " in md
    assert "measured C13 | **yes** |" in md
    assert "| C5 | " in md and "(chapter 02 not run)" in md  # no claims file: listed as not run
    assert "**3 of 14 claims hold** on this run (5 measured)" in md
    # Nothing measured: a placeholder, not a table of failures.
    assert build.write_scoreboard(runs[1:2], path).read_text() == build.SCOREBOARD_PLACEHOLDER


def test_build_book_writes_a_missing_scoreboard_as_a_placeholder(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(build, "_jupyter_book", lambda: ["true"])  # no real build
    (tmp_path / "book").mkdir()
    build.build_book(tmp_path)
    assert (tmp_path / "book" / "scoreboard.md").read_text() == build.SCOREBOARD_PLACEHOLDER
    (tmp_path / "book" / "scoreboard.md").write_text("kept")
    build.build_book(tmp_path)
    assert (tmp_path / "book" / "scoreboard.md").read_text() == "kept"


# --------------------------------------------------------------------------------------------
# Results tables, presets, dry runs, stand-ins


@pytest.fixture
def with_results(tmp_path: Path) -> Path:
    return write_notebook(
        tmp_path / "03_results.py",
        '# %% tags=["parameters"]\nx = 2\nwrite = True\nresults_file = None',
        "# %%\nif write:\n    open(results_file, 'w').write(f'x,y\\n{x},{x * x}\\n')",
    )


def test_execute_writes_results_table_and_record(with_results: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = execute.execute(with_results, "r", {"x": 3}, out_dir=out)
    table, record = records.results_paths(out, "03_results", "r")
    assert (result.results, result.record) == (table, record)
    assert table.read_text() == "x,y\n3,9\n"
    rec = records.read_record(record)
    assert rec is not None and rec["rows"] == 1 and rec["columns"] == ["x", "y"]
    assert rec["parameters"]["x"] == 3 and rec["notebook"] == "03_results-r.ipynb"
    shown = result.output.read_text()  # the table was written aside; the book shows its place
    assert f'results_file = \\"{table.resolve()}\\"' in shown and ".partial" not in shown

    table.write_text("x,y\n3,10\n")  # a table changed after the record: not finished
    assert records.read_record(record) is None
    table.write_text("x,y\n3,9\n")
    text = record.read_text()
    record.write_text(text[: len(text) // 2])  # a cut record: not finished
    assert records.read_record(record) is None


def test_execute_moves_the_claims_in_with_the_table(tmp_path: Path):
    chapter = write_notebook(
        tmp_path / "04_claims.py",
        '# %% tags=["parameters"]\nclaim = True\nresults_file = None',
        """
        # %%
        import pandas as pd
        from residual_core.analysis import claims
        pd.DataFrame({"x": [1]}).to_csv(results_file, index=False)
        if claim:
            claims.write_claims(claims._table([claims._row("C9", "m", True)]), results_file)
        """,
    )
    out = tmp_path / "out"
    execute.execute(chapter, "r", out_dir=out)
    written = out / "04_claims-r.claims.csv"
    assert written.read_text().splitlines()[1].startswith("C9,04,")
    execute.execute(chapter, "r", {"claim": False}, out_dir=out)  # an earlier run's claims go
    assert sorted(p.name for p in out.iterdir()) == [
        "04_claims-r.ipynb", "04_claims-r.results.csv", "04_claims-r.results.json"]


def test_a_run_without_its_table_is_not_finished(with_results: Path, tmp_path: Path):
    out = tmp_path / "out"
    execute.execute(with_results, "r", out_dir=out)
    table, record = records.results_paths(out, "03_results", "r")
    earlier = (table.read_text(), record.read_text())
    with pytest.raises(chapters.RunnerError, match="wrote no results table"):
        execute.execute(with_results, "r", {"write": False}, out_dir=out)
    # the failed rerun is not finished; the earlier complete run stays as it was, whole
    assert (table.read_text(), record.read_text()) == earlier
    assert records.read_record(record)["parameters"]["write"] is True
    assert sorted(p.name for p in out.iterdir()) == [
        "03_results-r.failed.ipynb", "03_results-r.ipynb", "03_results-r.results.csv",
        "03_results-r.results.json"], "no partial file left"


def test_every_chapter_has_a_paper_preset():
    for source in chapters.list_chapters():
        runs = presets.RUNS.get(source.stem, {})
        assert "paper" in runs, f"{source.stem}: no paper preset"
        full = chapters.check_overrides(source, runs["paper"])
        assert full["device"] == "cuda" and full["model"] != "tutorial", source.stem
        assert "results_file" in full and "weights" in full, source.stem


def test_write_results_adds_run_columns(tmp_path: Path):
    import pandas as pd

    table = pd.DataFrame({"unit": ["a", "b"], "history": [[1, 2], [3]]})
    path = records.write_results(table, tmp_path / "r.csv", model="m")
    back = pd.read_csv(path)
    assert back.columns.tolist() == ["unit", "history", "model", "run_wall_s", "peak_gpu_mib"]
    assert back.history.tolist() == ["[1, 2]", "[3]"] and (back.run_wall_s > 0).all()
    assert records.write_results(table, None) is None
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"], "no temporary file left"


@dataclass
class FakeModel:
    params_m: float
    download_mb: float


@dataclass
class FakeDataset:
    download_gb: float
    needs_manual_download: bool
    source_url: str


def test_dry_run_plan_counts_downloads_disk_and_gpu():
    from residual_core.runner import dryrun

    params = {"model": "openclip_b", "weights": "pretrained", "reference": "imagenet",
              "reference_size": 1000, "tasks": ["mnist", "synthetic"], "train_size": 100,
              "val_size": 50, "test_size": None, "variants": ["zero-shot", "fine-tune"],
              "batch_size": 64}
    random = {**params, "model": "clip_l", "weights": "random", "variants": ["zero-shot"]}
    plan = dryrun.plan(
        [("a", params), ("b", random)],
        model_info={"openclip_b": FakeModel(150.0, 600.0), "clip_l": FakeModel(428.0, 1710.0)},
        dataset_info={"imagenet": FakeDataset(150.0, True, "https://image-net.org"),
                      "mnist": FakeDataset(0.05, False, "https://mnist")},
    )
    b, l_random = plan.models["openclip_b"], plan.models["clip_l (random)"]
    assert b.download_gb == pytest.approx(600 / 1024) and l_random.download_gb == 0
    # test_size None counts a third of MNIST's 70,000 images
    assert plan.datasets["mnist"]["images"] == 2 * (150 + 70_000 // 3)
    assert plan.datasets["imagenet"]["manual"] and plan.datasets["synthetic"]["download_gb"] == 0
    assert plan.download_gb == pytest.approx(600 / 1024 + 150.05)
    # ViT-B-16 store: 12·12·64 head values + 13·768 residual values + 2, float32
    assert b.bytes_per_image == 4 * (12 * 12 * 64 + 13 * 768 + 2)
    assert plan.disk_gb > plan.download_gb + b.store_gb
    assert b.finetune_batch == 64 and b.gpu_gb > l_random.gpu_gb * 0 + 150e6 * 16 / 2**30
    text = dryrun.format_plan(plan)
    assert "MANUAL DOWNLOAD" in text and "estimate" in text and "no download" in text


def test_dry_run_command_runs_nothing(tmp_path: Path, capsys):
    code = cli.main(["run", "05", "--preset", "paper", "--dry-run", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "openclip_l" in out and "GPU memory" in out and "disk needed" in out
    assert not list(tmp_path.iterdir())


def test_synthetic_dataset_is_registered():
    from residual_core.data import load_dataset, synthetic
    from residual_core.models import load_model

    ds = load_dataset(synthetic.SYNTHETIC, "val", size=20)
    assert len(ds) == 20 and len(ds.classnames) == 6 and ds.labels.max() < 6
    with pytest.raises(ValueError, match="pretrained.*random"):
        load_model("clip_b", weights="randomised")
    with pytest.raises(Exception, match="no random stand-in for 'tutorial'"):
        load_model("tutorial", weights="random")


def test_chapter_00_writes_its_results_table(tmp_path: Path, monkeypatch):
    """A real chapter through the runner: one row per image × unit, exact, with its run cost."""
    import pandas as pd

    monkeypatch.setenv("RESIDUAL_CACHE", str(tmp_path / "cache"))
    result = execute.execute(chapters.find_chapter("00"), "t",
                             {"n_images": 2, "compare_images": 64}, out_dir=tmp_path)
    table = pd.read_csv(result.results)
    assert records.read_record(result.record)["rows"] == len(table)
    assert sorted(table.image.unique()) == [0, 1]
    assert table.groupby("image").unit.nunique().tolist() == [len(table) // 2] * 2
    assert (table.model == "tutorial").all() and (table.max_rel_error < 1e-5).all()
    assert (table.run_wall_s > 0).all() and table.peak_gpu_mib.isna().all()  # CPU run


def test_killed_rerun_leaves_the_earlier_complete_run_intact(tmp_path: Path):
    """kill -9 of a rerun mid-notebook, after it wrote its table: the earlier complete notebook,
    table and record stay byte for byte; the next success replaces them and leaves no partial."""
    import os
    import signal
    import subprocess
    import sys
    import time

    nb = write_notebook(
        tmp_path / "04_rerun.py",
        '# %% tags=["parameters"]\nx = 1\nhold = ""\nresults_file = None',
        """
        # %%
        import os, time
        open(results_file, "w").write(f"x\\n{x}\\n")
        if hold:
            open(hold, "w").close()
            time.sleep(120)
        """,
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "residual_core.runner", "run", str(nb), "--name", "r",
           "--out", str(out)]
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table, record = records.results_paths(out, "04_rerun", "r")
    notebook = out / "04_rerun-r.ipynb"
    earlier = {p: p.read_bytes() for p in (table, record, notebook)}

    hold = tmp_path / "holding"
    proc = subprocess.Popen([*cmd, "--param", "x=2", "--param", f"hold={hold}"], cwd=root,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not hold.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert hold.exists(), "the rerun never reached its last cell"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel
        proc.wait()
    assert {p: p.read_bytes() for p in earlier} == earlier, "the earlier run is intact"
    assert records.read_record(record)["parameters"]["x"] == 1
    assert len(list(out.glob(".*.partial.*"))) == 2, "the killed rerun wrote only aside"

    done = subprocess.run([*cmd, "--param", "x=3"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert table.read_text() == "x\n3\n" and records.read_record(record)["parameters"]["x"] == 3
    assert not list(out.glob(".*")), "the killed run's partial files are removed"


# --- book --jobs: chapters in parallel worker processes ---------------------------------------


def fake_book(tmp_path: Path, monkeypatch, *bodies: tuple[str, str]) -> dict:
    """Fake chapters ``(stem, body)`` as ``book``'s profile, no assets, no Jupyter Book build;
    returns what reached place_chapters (``"done"``)."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    selected = [(write_notebook(notebooks / f"{stem}.py", '# %% tags=["parameters"]\nn = 1',
                                f"# %%\n{body}"), "tutorial", {}) for stem, body in bodies]
    seen: dict = {}
    monkeypatch.setattr(build, "runs_for", lambda profile: selected)
    monkeypatch.setattr(build, "ensure_widget_assets", lambda: None)
    monkeypatch.setattr(build, "ensure_mathjax", lambda: None)
    monkeypatch.setattr(build, "copy_book_sources", lambda target: target)
    monkeypatch.setattr(build, "place_chapters", lambda done, where: seen.setdefault("done", done))
    monkeypatch.setattr(build, "write_scoreboard", lambda *a: None)
    monkeypatch.setattr(build, "build_book", lambda root: root / "index.html")
    return seen


def test_book_jobs_runs_the_chapters_in_parallel_in_chapter_order(tmp_path: Path, monkeypatch,
                                                                  capsys):
    # 05 (the costliest) starts first; 00 waits until 05's executed notebook is in place (the
    # runner's last step; a sleep can be outlasted on a loaded machine), so it ends last: done
    # is in chapter order anyway
    wait = ("import os, pathlib, time\nt = time.time()\n"
            f"done = pathlib.Path({str(tmp_path / 'book' / 'executed')!r})"
            " / '05_residual-tutorial.ipynb'\n"
            "while not done.exists() and time.time() - t < 120:\n"
            "    time.sleep(0.05)\n"
            "print('threads', os.environ.get('OMP_NUM_THREADS'))")
    seen = fake_book(tmp_path, monkeypatch, ("00_slow", wait), ("01_quick", "print('quick')"),
                     ("05_residual", "print('long one')"))
    build.book(jobs=2, out=tmp_path / "book")
    assert [r.source.stem for r in seen["done"]] == ["00_slow", "01_quick", "05_residual"]
    assert all(r.output.is_file() for r in seen["done"])
    # the kernels get the thread count of a sequential build (the same numbers)
    assert f"threads {build.kernel_threads()}" in cell_text(seen["done"][0].output)
    log = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[runner] 0")]
    assert log[0].startswith("[runner] 05_residual [tutorial] (defaults) ..."), log
    ok = [ln.split()[1] for ln in log if " ok in " in ln]
    assert sorted(ok) == ["00_slow", "01_quick", "05_residual"], log
    assert ok.index("05_residual") < ok.index("00_slow"), "ended out of chapter order"


def test_book_jobs_first_failure_stops_the_book(tmp_path: Path, monkeypatch):
    # 05 fails at once while 00 runs (until 05's failed notebook is written, whatever the
    # machine's load): 01 never starts, 00 is waited for, the error is 05's
    failed = tmp_path / "book" / "executed" / "05_residual-tutorial.failed.ipynb"
    wait = ("import pathlib, time\nt = time.time()\n"
            f"while not pathlib.Path({str(failed)!r}).exists() and time.time() - t < 120:\n"
            "    time.sleep(0.05)")
    seen = fake_book(tmp_path, monkeypatch, ("00_slow", wait),
                     ("01_never", "print('ran')"), ("05_residual", "raise ValueError('boom')"))
    with pytest.raises(execute.NotebookError, match="05_residual.py") as err:
        build.book(jobs=2, out=tmp_path / "book")
    assert err.value.cell == 2 and err.value.run == "tutorial"
    executed = tmp_path / "book" / "executed"
    assert (executed / "00_slow-tutorial.ipynb").is_file(), "the running chapter was waited for"
    assert not (executed / "01_never-tutorial.ipynb").exists(), "the pending one was cancelled"
    assert "done" not in seen


def test_book_jobs_keep_going_lists_every_failure(tmp_path: Path, monkeypatch):
    seen = fake_book(tmp_path, monkeypatch, ("00_fails", "raise ValueError('one')"),
                     ("01_ok", "print('ok')"), ("05_residual", "raise ValueError('two')"))
    with pytest.raises(chapters.RunnerError, match="2 chapter") as err:
        build.book(jobs=2, keep_going=True, out=tmp_path / "book")
    assert not isinstance(err.value, execute.NotebookError)
    assert "00_fails [tutorial] code cell 2; 05_residual [tutorial] code cell 2" in str(err.value)
    assert (tmp_path / "book" / "executed" / "01_ok-tutorial.ipynb").is_file()
    assert "done" not in seen


@pytest.mark.parametrize("jobs", [1, 2])
def test_book_threads_reach_every_kernel_whatever_the_jobs(tmp_path: Path, monkeypatch, jobs):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch caps it at the cores: 1 differs
    body = ("import os, torch\n"
            "print('seen', os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'], "
            "torch.get_num_threads())")
    seen = fake_book(tmp_path, monkeypatch, ("00_a", body), ("01_b", body))
    build.book(jobs=jobs, threads=1, out=tmp_path / "book")
    for run in seen["done"]:
        assert "seen 1 1 1" in cell_text(run.output), cell_text(run.output)
    assert os.environ["OMP_NUM_THREADS"] == "2", "the runner's own setting is restored"


def test_book_kernels_get_the_malloc_setting_unless_the_environment_has_one(tmp_path: Path,
                                                                            monkeypatch):
    body = "import os\nprint('tunables', os.environ.get('GLIBC_TUNABLES'))"
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    seen = fake_book(tmp_path, monkeypatch, ("00_a", body))
    build.book(jobs=1, threads=1, out=tmp_path / "book")
    expected = ("glibc.malloc.mmap_threshold=268435456:"
                "glibc.malloc.trim_threshold=536870912")
    assert f"tunables {expected}" in cell_text(seen["done"][0].output)
    assert "GLIBC_TUNABLES" not in os.environ, "the runner's own environment is restored"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's wins
    (tmp_path / "again").mkdir()
    seen = fake_book(tmp_path / "again", monkeypatch, ("00_a", body))
    build.book(jobs=1, threads=1, out=tmp_path / "again" / "book")
    assert "tunables glibc.malloc.arena_max=2" in cell_text(seen["done"][0].output)


def test_kernel_threads_default_is_the_environments_else_half_the_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert build.kernel_threads() == 7 and build.kernel_threads(2) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(build.os, "cpu_count", lambda: 16)
    assert build.kernel_threads() == 8
    monkeypatch.setattr(build.os, "cpu_count", lambda: 1)
    assert build.kernel_threads() == 1
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(chapters.ParameterError, match="--threads must be"):
            build.kernel_threads(bad)


def test_book_jobs_refuses_less_than_one(capsys):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(chapters.ParameterError, match="--jobs must be"):
            build.check_jobs(bad)
    assert cli.main(["book", "--jobs", "0", "--dry-run"]) == 2
    assert "--jobs must be a whole number of chapters ≥ 1, got 0" in capsys.readouterr().err


def test_a_chapter_run_and_its_error_cross_processes(tmp_path: Path):
    import pickle

    run = records.ChapterRun(tmp_path / "a.py", "r", {"x": [1]}, tmp_path / "a-r.ipynb", 1.5)
    assert pickle.loads(pickle.dumps(run)) == run
    err = execute.NotebookError("boom", tmp_path / "a.py", "r", 3, 7, tmp_path / "a.failed")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is execute.NotebookError and str(back) == "boom"
    assert (back.notebook, back.run, back.cell, back.line, back.output) == (
        err.notebook, err.run, err.cell, err.line, err.output)


def test_dry_run_counts_the_tutorial_models_stores():
    from residual_core.runner import dryrun
    from residual_core.tutorial.model import load_tiny_clip

    visual = load_tiny_clip()[0].visual  # the layout, read off the built model itself
    layers = len(visual.transformer.resblocks)
    width = visual.conv1.out_channels
    heads = visual.transformer.resblocks[0].attn.num_heads
    params = {"model": "tutorial", "reference": "world.reference", "reference_size": 1000}
    plan = dryrun.plan([("t", params)])
    need = plan.models["tutorial"]
    assert need.bytes_per_image == 4 * (layers * width + (layers + 1) * width + 2)
    assert need.images == 1000 and width % heads == 0
    assert plan.disk_gb == pytest.approx(1000 * need.bytes_per_image / 2**30)
