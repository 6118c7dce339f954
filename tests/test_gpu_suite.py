"""The GPU suite: its CPU smoke run, the README table rendered from it, timeouts, wheels."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import math
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch
from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_suite as gs  # noqa: E402


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    """One smoke run of the shell command, as the GPU machine would run it (CPU, tiny sizes)."""
    out = tmp_path_factory.mktemp("smoke")
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke", str(out)],
                          env={**gs._child_env(), "PYTHON": sys.executable}, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"smoke run: {time.perf_counter() - start:.0f} s")
    return out, json.loads((out / "results.json").read_text())


def test_smoke_run_measures_every_part(smoke):
    out, results = smoke
    assert results["smoke"] is True and results["env"]["device"].startswith("CPU")
    assert list(results["parts"]) == list(gs.PARTS)
    for name, part in results["parts"].items():
        assert part["status"] == "ok", (name, part.get("error"))
        assert 0 < part["seconds"] <= part["budget_s"], (name, part)
    sizes = gs.SMOKE_SIZES
    dec = results["parts"]["decompose"]
    assert len(dec["rows"]) == len(sizes["decompose"]["models"]) * len(sizes["decompose"]["dtypes"])
    for row in dec["rows"]:
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
        assert row["plain_img_s"] > 0 and row["decompose_img_s"] > 0, row
        assert row["mem_ratio"] is None, row  # no CUDA peak on the CPU
    agreement = {r["dtype"]: r for r in dec["agreement"]}
    assert agreement["float32"]["max_rel_err"] < 1e-4, agreement
    assert agreement["bfloat16"]["max_rel_err"] < 4 * torch.finfo(torch.bfloat16).eps, agreement
    assert agreement["float32"]["n_images"] == sizes["decompose"]["agreement_images"]
    assert "decompose" in (out / "profile.txt").read_text()
    assert "Self CPU" in dec["profile"]["decompose_top"]
    store = results["parts"]["store"]
    assert store["n"] == sizes["store"]["n"] and store["ratio"] > 0, store
    assert store["ratio"] == pytest.approx(store["store_img_s"] / store["plain_img_s"])
    epoch = results["parts"]["residual_epoch"]
    n_layers, n_heads, d_head, d_out = sizes["residual_epoch"]["shape"]
    assert epoch["n_lambda"] == n_layers * (n_heads * d_head + d_out)
    assert [r["batch"] for r in epoch["rows"]] == sizes["residual_epoch"]["batch_sizes"]
    assert all(r["residual_s"] > 0 and r["linear_s"] > 0 for r in epoch["rows"])
    chapter = results["parts"]["chapter05"]
    assert chapter["mode"] == "runner" and chapter["wall_s"] > 0
    assert chapter["command"].startswith("python -m residual_core.runner run 05 --preset standin")
    assert chapter["rows"] == 7 and "residual-full" in chapter["variants"], chapter
    assert chapter["peak_gpu_mib"] is None
    assert (out / chapter["table"]).exists()
    tests = results["parts"]["pytest_gpu"]
    assert tests["returncode"] == 0 and tests["failed"] == 0 and tests["skipped"] == 0, tests
    assert tests["passed"] >= 8, tests  # the GPU tests ran, on the CPU
    md_text = (out / "results.md").read_text()
    assert "| measurement | target | measured | met |" in md_text
    assert all(f"| {name} | ok |" in md_text for name in gs.PARTS)
    assert "=== [gpu-suite] pytest_gpu: ok" in (out / "suite.log").read_text()


def test_gpu_sizes_and_budgets_are_the_issues():
    sizes = gs.GPU_SIZES
    assert sizes["decompose"]["models"] == ["ViT-B-16", "ViT-L-14"]
    assert sizes["decompose"]["dtypes"] == ["float16", "bfloat16"]
    assert sizes["decompose"]["batch"] == 256 and sizes["decompose"]["agreement_images"] == 4
    assert sizes["store"]["model"] == "ViT-L-14" and sizes["store"]["n"] == 20_000
    n_layers, n_heads, d_head, d_out = sizes["residual_epoch"]["shape"]
    assert n_layers * (n_heads * d_head + d_out) == 43_008
    assert sizes["residual_epoch"]["n"] == 50_000
    assert sizes["chapter05"]["overrides"] == {}  # the standin preset as it is
    assert set(gs.BUDGET_S) == set(gs.PARTS)
    # Every part's budget, plus 20 s for the wheel install, inside the deadline, inside 9 min.
    assert sum(gs.BUDGET_S.values()) + 20 <= gs.DEADLINE_S <= 9 * 60


def test_render_puts_the_rows_between_the_markers(smoke, tmp_path):
    out, results = smoke
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    before = readme.read_text()
    record = tmp_path / "record.json"
    table = gs.render(out / "results.json", readme, record, allow_smoke=True)
    after = readme.read_text()
    head, block_and_tail = after.split(gs.BEGIN)
    block, tail = block_and_tail.split(gs.END)
    assert head == before.split(gs.BEGIN)[0] and tail == before.split(gs.END)[1]
    assert block.strip() == table.strip()
    rows = gs.summary_rows(results)
    assert len(rows) >= 10
    for label, _, value, _ in rows:
        assert f"| {label} |" in block and value in block, (label, value)
    assert "CPU (" in block and results["started"][:10] in block  # the device and the date
    assert json.loads(record.read_text()) == results
    # Rendering again from the record changes nothing, and --check agrees.
    gs.render(None, readme, record)
    assert readme.read_text() == after
    gs.render(None, readme, record, check=True)


def test_render_keeps_smoke_runs_out_of_the_readme(smoke, tmp_path):
    out, _ = smoke
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    with pytest.raises(ValueError, match="smoke run"):
        gs.render(out / "results.json", readme, tmp_path / "record.json")
    assert readme.read_text() == (ROOT / "README.md").read_text()
    assert not (tmp_path / "record.json").exists()


def test_readme_shows_the_committed_gpu_record():
    """The README's GPU table is what `gpu_suite.py render` writes from the committed record."""
    gs.render(None, ROOT / "README.md", gs.RECORD, check=True)
    block = (ROOT / "README.md").read_text().split(gs.BEGIN)[1].split(gs.END)[0]
    if not gs.RECORD.exists():
        assert "not measured yet" in block
    else:
        assert json.loads(gs.RECORD.read_text())["smoke"] is False


def test_render_needs_exactly_one_block():
    with pytest.raises(ValueError, match="exactly one"):
        gs.render_readme("# no markers\n", None)
    with pytest.raises(ValueError, match="exactly one"):
        gs.render_readme(f"{gs.BEGIN}\n{gs.END}\n{gs.BEGIN}\n{gs.END}\n", None)


def fake_results(**parts) -> dict:
    """A GPU run's results with the given parts (the rest not run)."""
    return {"smoke": False, "started": "2026-12-01T10:00:00+00:00", "commit": None,
            "wall_s": 500.0, "sizes": gs.GPU_SIZES, "parts": parts,
            "env": {"device": "NVIDIA H200", "torch": "2.11.0", "open_clip": "3.3.0",
                    "python": "3.12.3"}}


def decompose_row(model: str, dtype: str, ratio: float, mem_ratio: float) -> dict:
    return {"model": model, "dtype": dtype, "batch": 256, "plain_img_s": 1000.0,
            "decompose_img_s": 1000.0 * ratio, "ratio": ratio, "plain_peak_gib": 2.0,
            "decompose_peak_gib": 2.0 * mem_ratio, "mem_ratio": mem_ratio, "max_rel_err": 1e-3}


def test_merged_runs_take_each_part_from_its_last_run(tmp_path):
    epoch = {"status": "ok", "seconds": 20.0, "budget_s": 50, "runs": [
        {"batch": 64, "residual_s": 0.4, "linear_s": 0.5}]}
    failed = {"status": "failed", "seconds": 12.0, "budget_s": 50, "error": "boom"}
    first = fake_results(residual_epoch=failed, pytest_gpu={**failed, "passed": 0, "failed": 1})
    first["commit"] = "aaaaaaa"
    rerun = fake_results(residual_epoch=epoch)
    rerun.update(started="2026-12-01T11:00:00+00:00", commit="aaaaaaa")  # the device's old HEAD
    merged = gs.merge_runs([first, rerun], ["aaaaaaa", "bbbbbbb"])
    assert merged["parts"] == {"residual_epoch": epoch, "pytest_gpu": first["parts"]["pytest_gpu"]}
    assert [(r["commit"], r["parts"]) for r in merged["runs"]] == [
        ("aaaaaaa", ["pytest_gpu"]), ("bbbbbbb", ["residual_epoch"])]
    header = gs.summary_markdown(merged).splitlines()[0]
    assert "pytest_gpu at aaaaaaa; residual_epoch at bbbbbbb" in header
    assert merged["started"] == first["started"]
    assert "commit" not in merged and "wall_s" not in merged  # per run, under "runs" only
    # One run alone stays as it was; mixed devices or smoke with GPU runs are refused.
    assert gs.merge_runs([first]) == first
    other = fake_results()
    other["env"] = {**other["env"], "device": "NVIDIA H100"}
    with pytest.raises(ValueError, match="different devices"):
        gs.merge_runs([first, other])
    with pytest.raises(ValueError, match="smoke"):
        gs.merge_runs([first, {**rerun, "smoke": True}])
    with pytest.raises(ValueError, match="2 commits for 1 runs"):
        gs.merge_runs([first], ["a", "b"])


def test_a_run_names_its_code_by_tree_and_render_finds_the_commit(tmp_path):
    # The device's .git can be older than the files sent: the tree of the files names the code.
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    (repo / "a.py").write_text("x = 2\n")  # changed, not committed: HEAD is stale
    tree = gs._git_tree(repo)
    head_tree = subprocess.run([*git, "rev-parse", "HEAD^{tree}"], text=True,
                               capture_output=True).stdout.strip()
    assert tree and tree != head_tree and gs.commit_of_tree(tree, repo) is None
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], text=True,
                          capture_output=True).stdout.strip()
    assert gs.commit_of_tree(tree, repo) == head

def test_a_single_run_is_named_by_the_commit_holding_its_tree(monkeypatch):
    monkeypatch.setattr(gs, "commit_of_tree", {"t1": "beefcaf"}.get)
    run = {**fake_results(), "commit": "0000000", "tree": "t1"}  # the device's stale HEAD
    assert gs.merge_runs([run])["commit"] == "beefcaf"
    assert gs.merge_runs([{**run, "tree": "t2"}])["commit"] == "0000000"  # no such commit here
    assert gs.merge_runs([run], ["abc1234"])["commit"] == "abc1234"
    assert "commit beefcaf" in gs.summary_markdown(gs.merge_runs([run])).splitlines()[0]


def test_summary_says_how_far_a_target_is_missed():
    rows = [decompose_row(m, d, 0.81 if m == "ViT-L-14" and d == "float16" else 1.0, 1.3)
            for m in ("ViT-B-16", "ViT-L-14") for d in ("float16", "bfloat16")]
    results = fake_results(
        decompose={"status": "ok", "seconds": 90, "rows": rows, "agreement": []},
        store={"status": "timed out", "seconds": 100.0},
        residual_epoch={"status": "ok", "seconds": 30, "n": 50_000, "n_lambda": 43_008,
                        "rows": [{"batch": 64, "residual_s": 0.6, "linear_s": 0.1}]},
    )
    table = {label: (target, value, met) for label, target, value, met in
             gs.summary_rows(results)}
    main = "ViT-L-14, batch 256, float16"
    assert table[f"`decompose` ÷ plain `encode_image`, img/s: {main}"] == (
        "≥ 0.9×", "0.81 (810 vs 1,000 img/s)", "**no**: 10% short of the target")
    assert table[f"peak memory, `decompose` ÷ plain: {main}"][2] == "**no**: 8% over the target"
    other = "`decompose` ÷ plain `encode_image`, img/s: ViT-B-16, batch 256, float16"
    assert table[other][2] == "–"  # no target
    store = next(v for k, v in table.items() if k.startswith("store"))
    assert store == ("≥ 0.8×", "timed out after 100 s", "")
    epoch = table["ResiDual-full epoch, 50,000 samples, batch 64"]
    assert epoch == ("≤ 0.5 s", "0.600 s (43,008 λ)", "**no**: 20% over the target")
    assert table["`pytest -m gpu` (device-specific paths)"][1] == "not run"
    assert any("not measured (part stopped early)" in v for _, v, _ in table.values())
    header = gs.summary_markdown(results).splitlines()[0]
    assert "**NVIDIA H200**" in header and "2026-12-01" in header
    assert "not measured yet" in gs.summary_markdown(None)


def test_summary_keeps_what_a_part_measured_before_it_timed_out():
    rows = [decompose_row("ViT-B-16", d, 1.0, 1.0) for d in ("float16", "bfloat16")]
    results = fake_results(decompose={"status": "timed out", "seconds": 110.0, "rows": rows,
                                      "agreement": []})
    table = {label: (value, met) for label, _, value, met in gs.summary_rows(results)}
    done = "`decompose` ÷ plain `encode_image`, img/s: ViT-B-16, batch 256, bfloat16"
    assert table[done] == ("1.00 (1,000 vs 1,000 img/s) (timed out later)", "–")
    main = "`decompose` ÷ plain `encode_image`, img/s: ViT-L-14, batch 256, float16"
    assert table[main] == ("timed out after 110 s", "")


def test_a_part_out_of_time_is_killed_with_its_children_and_keeps_its_results(tmp_path):
    result, pid_file = tmp_path / "part.json", tmp_path / "grandchild.pid"
    code = ("import json, subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); "
            f"open({str(result)!r}, 'w').write(json.dumps({{'rows': [1]}})); "
            "print('measured one row', flush=True); time.sleep(120)")
    log = tmp_path / "log"
    start = time.perf_counter()
    with open(log, "w") as f:
        data = gs.run_part([sys.executable, "-c", code], result, 6, f)
    assert time.perf_counter() - start < 30
    assert data["status"] == "timed out" and data["rows"] == [1] and data["budget_s"] == 6
    assert "measured one row" in log.read_text()
    status = Path(f"/proc/{pid_file.read_text()}/status")
    deadline = time.time() + 10
    while status.exists() and "State:\tZ" not in status.read_text() and time.time() < deadline:
        time.sleep(0.2)  # SIGKILL lands asynchronously
    assert not status.exists() or "State:\tZ" in status.read_text(), "grandchild still running"


def test_a_failing_part_records_its_error(tmp_path):
    code = "import sys; print('CUDA error: out of memory', flush=True); sys.exit(3)"
    with open(tmp_path / "log", "w") as f:
        data = gs.run_part([sys.executable, "-c", code], tmp_path / "none.json", 60, f)
    assert data["status"] == "failed" and data["returncode"] == 3
    assert "out of memory" in data["error"]
    with open(tmp_path / "log", "w") as f:
        skipped = gs.run_part([sys.executable, "-c", "pass"], tmp_path / "none.json", 2, f)
    assert skipped["status"] == "skipped"


def test_shell_command_refuses_bad_arguments():
    script = str(ROOT / "benchmarks" / "gpu_suite.sh")
    for args in ([], ["--smoke"], ["--bogus"], ["a", "b"], ["--exec"]):
        proc = subprocess.run(["bash", script, *args], capture_output=True, text=True,
                              env={**gs._child_env(), "PYTHON": sys.executable})
        assert proc.returncode == 2 and "usage:" in proc.stderr, (args, proc.stderr)


def test_shell_command_execs_a_command_after_the_install(tmp_path):
    # --exec: what the GPU machine runs besides the suite (the tutorial model's training).
    script = str(ROOT / "benchmarks" / "gpu_suite.sh")
    proc = subprocess.run(
        ["bash", script, "--exec", sys.executable, "-c", "import sys; print(sys.argv[1:])",
         "a b", "c"], capture_output=True, text=True,
        env={**gs._child_env(), "GPU_SUITE_WHEELS": str(tmp_path / "none")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['a b', 'c']"
    assert "no .whl/" in proc.stderr


def test_check_wheels_names_missing_extra_and_tampered_files(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"a")
    (tmp_path / "b-1.0-py3-none-any.whl").write_bytes(b"tampered")
    (tmp_path / "x-1.0-py3-none-any.whl").write_bytes(b"x")
    sha = {name: gs._sha256(tmp_path / name) for name in ("a-1.0-py3-none-any.whl",)}
    manifest = {"wheels": {
        "a==1.0": {"file": "a-1.0-py3-none-any.whl", "sha256": sha["a-1.0-py3-none-any.whl"]},
        "b==1.0": {"file": "b-1.0-py3-none-any.whl", "sha256": "0" * 64},
        "c==1.0": {"file": "c-1.0-py3-none-any.whl", "sha256": "0" * 64},
    }}
    problems = gs.check_wheels(tmp_path, manifest)
    assert problems[0] == "missing c-1.0-py3-none-any.whl"
    assert problems[1] == "not in the manifest: x-1.0-py3-none-any.whl"
    assert problems[2].startswith("sha256 of b-1.0-py3-none-any.whl is ")
    assert len(problems) == 3
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "verify",
                           "--dest", str(tmp_path / "empty")], capture_output=True, text=True)
    assert proc.returncode == 1 and "missing open_clip_torch-3.3.0" in proc.stderr


def test_wheel_manifest_pins_the_tested_versions():
    manifest = gs.read_manifest()
    pinned = {norm(r.split("==")[0]): r.split("==")[1] for r in
              (ROOT / "requirements.txt").read_text().split() if "==" in r}
    carried = {norm(r.split("==")[0]): r.split("==")[1] for r in manifest["wheels"]}
    for name in ("open-clip-torch", "schedulefree", "papermill", "jupytext", "ipykernel",
                 "ipywidgets"):
        assert carried[name] == pinned[name], name
    for req, entry in manifest["wheels"].items():
        name, version = req.split("==")
        assert norm(entry["file"]).startswith(f"{norm(name)}-{norm(version)}-"), req
        assert entry["file"].endswith(".whl") and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    ignored = subprocess.run(["git", "check-ignore", "-q", ".whl/x.whl"], cwd=ROOT)
    assert ignored.returncode == 0, ".whl/ must stay out of git"


def gpu_machine_packages() -> set[str]:
    manifest = gs.read_manifest()
    return ({norm(d) for d in manifest["device"]}
            | {norm(r.split("==")[0]) for r in manifest["wheels"]}
            | {norm(d) for d in manifest.get("not_needed", {})})


def test_manifest_rewrite_keeps_every_table_and_comment(tmp_path):
    # `prepare --refresh` rewrites the manifest: it must not drop what it does not change.
    copy = tmp_path / "gpu_wheels.toml"
    copy.write_text(gs.MANIFEST.read_text())
    gs.write_manifest(gs.read_manifest(), copy)
    assert copy.read_text() == gs.MANIFEST.read_text()


def test_every_import_is_on_the_gpu_machine_or_carried():
    """What the package, chapters, benchmarks and tests import exists there (else pytest -m gpu
    or a part would die on an ImportError only on the rare GPU run)."""
    files = [*ROOT.glob("residual_core/**/*.py"), *ROOT.glob("notebooks/*.py"),
             *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tests/*.py")]
    local = {"residual_core"} | {p.stem for p in files}
    imported: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], path)
    # pytest's own options load modules too: the runtime shape checker of every test run.
    pyproject = ROOT / "pyproject.toml"
    addopts = tomllib.loads(pyproject.read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    for name in re.findall(r"([A-Za-z_]\w*)(?:\.\w+)*\(", addopts):
        imported.setdefault(name, pyproject)
    if "--jaxtyping-packages" in addopts:
        imported.setdefault("jaxtyping", pyproject)
    distributions = md.packages_distributions()
    there = gpu_machine_packages()
    missing = {}
    for module, path in imported.items():
        if module in sys.stdlib_module_names or module in local:
            continue
        if not any(norm(d) in there for d in distributions.get(module, [module])):
            missing[module] = str(path.relative_to(ROOT))
    assert not missing, f"imported but neither on the GPU machine nor carried: {missing}"


def wheel_requirements(req: str) -> list[str] | None:
    """Requires-Dist of a carried wheel: from .whl/ if prepared, else from this environment when
    it has the same version (``None`` when neither is at hand)."""
    name, version = req.split("==")
    entry = gs.read_manifest()["wheels"][req]
    wheel = gs.WHEELS / entry["file"]
    if wheel.exists():
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            text = z.read(meta).decode()
        return [line.split(":", 1)[1].strip() for line in text.splitlines()
                if line.startswith("Requires-Dist:")]
    try:
        if md.version(name) != version:
            return None
    except md.PackageNotFoundError:
        return None
    return md.requires(name) or []


def test_carried_wheels_need_nothing_else():
    """Each carried wheel's requirements (Python 3.12, Linux) are carried or on the machine."""
    env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
           "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "platform_machine": "x86_64",
           "extra": ""}
    there = gpu_machine_packages()
    missing, checked = [], []
    for req in gs.read_manifest()["wheels"]:
        deps = wheel_requirements(req)
        if deps is None:
            continue
        checked.append(norm(req.split("==")[0]))
        for dep in map(Requirement, deps):
            if dep.marker is not None and not Marker(str(dep.marker)).evaluate(env):
                continue
            if norm(dep.name) not in there:
                missing.append(f"{req} needs {dep}")
    assert not missing, missing
    # requirements.txt pins these, so their metadata is always at hand.
    assert {"open-clip-torch", "schedulefree", "papermill", "ipykernel"} <= set(checked)
