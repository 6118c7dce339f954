"""The GPU suite: every GPU figure of the README from one command, each part under a time budget.

Parts, each run in its own process, both sides of every ratio measured in that process:

1. ``decompose``: ``decompose`` ÷ plain ``encode_image`` (img/s and peak memory) for ViT-B-16
   and ViT-L-14, random weights, batch 256, fp16 and bf16 autocast; the per-unit agreement of
   the autocast decomposition with a float64 CPU decomposition of the same 4 images; the
   profiler's top operators of one plain forward and one decomposition (``profile.txt``);
2. ``store``: ``build_store`` (decompose + float16 writes to disk) ÷ plain forward, ViT-L-14,
   20k images;
3. ``residual_epoch``: one ResiDual-full epoch on ViT-L-14 sizes (43,008 λ, 50k samples) and one
   linear-adapter epoch, seconds each;
4. ``chapter05``: ``python -m residual_core.runner run 05 --preset standin`` (random ``clip_l``,
   the ``synthetic`` dataset) through the runner: wall time and peak GPU memory;
5. ``pytest_gpu``: ``pytest -m gpu``, the library's device-specific paths.

Commands (``benchmarks/gpu_suite.sh`` wraps the first three)::

    python benchmarks/gpu_suite.py prepare            # download the wheels of gpu_wheels.toml
    python benchmarks/gpu_suite.py verify             # check .whl/ against the manifest
    python benchmarks/gpu_suite.py run OUT [--smoke]  # run every part, write OUT/results.*
    python benchmarks/gpu_suite.py render [RESULTS]   # results.json → README's GPU table
    python benchmarks/gpu_suite.py render R1 R2 --commits C1 C2   # a run, then a rerun of
                                                      # its failed parts (--parts), merged

``run`` writes ``results.json`` and ``results.md`` after every part (a part that runs out of
its time is killed and recorded as timed out, with what it had measured so far), so the whole
run stays within :data:`DEADLINE_S` of the shell's start. ``--smoke`` runs the same parts on
the CPU at tiny sizes (the test suite does, so the command cannot rot between GPU runs).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the parts only: prepare/verify/render run without it
    import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
README = ROOT / "README.md"
MANIFEST = BENCH / "gpu_wheels.toml"
WHEELS = ROOT / ".whl"
RECORD = BENCH / "results" / "gpu_suite.json"
"""The last GPU run's results, committed: what the README's GPU table is rendered from."""

BEGIN = "<!-- gpu-suite:begin (python benchmarks/gpu_suite.py render; do not edit by hand) -->"
END = "<!-- gpu-suite:end -->"

DEADLINE_S = 530
"""The whole GPU run, wheel install included, ends within this many seconds (9 min = 540)."""

PARTS = ("decompose", "store", "residual_epoch", "chapter05", "pytest_gpu")

BUDGET_S = {"decompose": 60, "store": 75, "residual_epoch": 35, "chapter05": 270,
            "pytest_gpu": 70}
"""Seconds each part may take on the GPU; time a part leaves unused goes to the next ones.

Measured on an H200 (2026-11-30, imports and random ViT-L init included): decompose 39 s,
store 53 s, epochs 21 s, pytest -m gpu 42–51 s. Chapter 05 had trained every variant and was
in its last cells after 226 s, so it gets the most (and whatever the earlier parts leave).
"""

SMOKE_BUDGET_S = 240
"""Seconds each part may take in a smoke run (CPU, tiny sizes: a few seconds each)."""

GPU_SIZES: dict[str, dict[str, Any]] = {
    "decompose": {"models": ["ViT-B-16", "ViT-L-14"], "dtypes": ["float16", "bfloat16"],
                  "batch": 256, "iters": 10, "warmup": 3, "agreement_images": 4,
                  "profile": ("ViT-L-14", "float16")},
    "store": {"model": "ViT-L-14", "n": 20_000, "batch": 256, "workers": 8},
    "residual_epoch": {"n": 50_000, "n_classes": 10, "batch_sizes": [64, 1024],
                       "shape": (24, 16, 64, 768)},
    "chapter05": {"overrides": {}},
    "pytest_gpu": {"env": {}, "paths": ["tests"]},
}
SMOKE_SIZES: dict[str, dict[str, Any]] = {
    "decompose": {"models": ["tiny"], "dtypes": ["float32", "bfloat16"], "batch": 8,
                  "iters": 2, "warmup": 1, "agreement_images": 4, "profile": ("tiny", "float32")},
    "store": {"model": "tiny", "n": 256, "batch": 64, "workers": 0},
    "residual_epoch": {"n": 256, "n_classes": 10, "batch_sizes": [64], "shape": (2, 4, 16, 32)},
    # The tutorial model and tokenizer instead of random clip_l: the same chapter and runner.
    "chapter05": {"overrides": {
        "model": "tutorial", "weights": "pretrained", "dictionary": "tutorial", "device": "cpu",
        "threads": 1, "num_workers": 0, "reference_size": 64, "train_size": 32, "val_size": 16,
        "test_size": 16, "max_epochs": 1, "finetune_epochs": 1, "finetune_train_size": 16}},
    # The GPU tests run on the CPU here, so they are exercised between GPU runs too.
    "pytest_gpu": {"env": {"RESIDUAL_GPU_TESTS_ON_CPU": "1"}, "paths": ["tests/test_gpu.py"]},
}

TARGETS = {
    "decompose_ratio": (">=", 0.9, "×"),
    "decompose_mem_ratio": ("<=", 1.2, "×"),
    "store_ratio": (">=", 0.8, "×"),
    "residual_epoch_s": ("<=", 0.5, " s"),
}
"""The issue's GPU targets: ViT-L-14 fp16 decomposition, store, ResiDual epoch at batch 64."""


# --------------------------------------------------------------------------- wheels


def read_manifest(path: Path = MANIFEST) -> dict[str, Any]:
    """The wheel manifest: target ``python``, ``platforms``, ``device`` packages, ``wheels``."""
    manifest = tomllib.loads(path.read_text())
    for key in ("python", "platforms", "device", "wheels"):
        if key not in manifest:
            raise ValueError(f"{path}: no {key!r} entry")
    return manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_wheels(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """What is wrong with the wheels in ``folder`` against the manifest (empty: all good)."""
    want = {entry["file"]: entry["sha256"] for entry in manifest["wheels"].values()}
    have = {p.name: p for p in folder.glob("*.whl")} if folder.is_dir() else {}
    problems = [f"missing {name}" for name in sorted(set(want) - set(have))]
    problems += [f"not in the manifest: {name}" for name in sorted(set(have) - set(want))]
    for name in sorted(set(want) & set(have)):
        got = _sha256(have[name])
        if got != want[name]:
            problems.append(f"sha256 of {name} is {got}, the manifest says {want[name]}")
    return problems


def pip_download(requirements: Sequence[str], dest: Path, manifest: dict[str, Any],
                 python: str = sys.executable) -> None:
    """``pip download`` the wheels for the manifest's Python and platforms, without deps."""
    cmd = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", manifest["python"], "--implementation", "cp",
           *[f"--platform={p}" for p in manifest["platforms"]], "-d", str(dest),
           *requirements]
    subprocess.run(cmd, check=True)


NOT_NEEDED_COMMENT = ("# Imported somewhere, but only lazily, by code the suite never runs on the "
                      "GPU machine.")


def write_manifest(manifest: dict[str, Any], path: Path = MANIFEST) -> None:
    """Rewrite the manifest (its header comment kept) with the given entries."""
    text = path.read_text().splitlines()
    header = text[:next(i for i, line in enumerate(text) if not line.startswith("#"))]
    lines = [*header, f'python = "{manifest["python"]}"',
             "platforms = [" + ", ".join(f'"{p}"' for p in manifest["platforms"]) + "]",
             "device = ["]
    device = sorted(manifest["device"])
    lines += ["    " + ", ".join(f'"{d}"' for d in device[i:i + 6]) + ","
              for i in range(0, len(device), 6)]
    lines.append("]")
    if manifest.get("not_needed"):
        lines += ["", NOT_NEEDED_COMMENT, "[not_needed]"]
        lines += [f'{name} = "{why}"' for name, why in manifest["not_needed"].items()]
    lines += ["", "[wheels]"]
    for req, entry in sorted(manifest["wheels"].items(), key=lambda kv: kv[0].lower()):
        lines.append(f'"{req}" = {{ file = "{entry["file"]}", sha256 = "{entry["sha256"]}" }}')
    path.write_text("\n".join(lines) + "\n")


def prepare(dest: Path = WHEELS, *, refresh: bool = False) -> list[Path]:
    """Download exactly the manifest's wheels into ``dest`` and check them.

    Args:
        dest: The folder the device call carries (``.whl``, git-ignored).
        refresh: Record the downloaded files and hashes in the manifest instead of checking
            them (after changing a version there).

    Returns:
        The wheels in ``dest``.

    Raises:
        SystemExit: If a wheel is missing, extra or has another hash than the manifest's.
    """
    manifest = read_manifest()
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp:
        pip_download(list(manifest["wheels"]), Path(tmp), manifest)
        if refresh:
            files = {p.name: p for p in Path(tmp).glob("*.whl")}
            for req, entry in manifest["wheels"].items():
                stem = req.split("==")[0].replace("-", "_").lower()
                match = [n for n in files if n.lower().startswith(f"{stem}-{req.split('==')[1]}-")]
                if len(match) != 1:
                    raise SystemExit(f"{req}: downloaded {match or 'nothing'}")
                entry.update(file=match[0], sha256=_sha256(files[match[0]]))
            write_manifest(manifest)
        problems = check_wheels(Path(tmp), manifest)
        if problems:
            raise SystemExit("the downloaded wheels do not match benchmarks/gpu_wheels.toml:\n  "
                             + "\n  ".join(problems))
        dest.mkdir(exist_ok=True)
        for old in dest.glob("*.whl"):
            old.unlink()
        for wheel in Path(tmp).glob("*.whl"):
            shutil.move(str(wheel), dest / wheel.name)
    wheels = sorted(dest.glob("*.whl"))
    size = sum(p.stat().st_size for p in wheels)
    print(f"{len(wheels)} wheels, {size / 2**20:.1f} MiB in {dest} (checked against "
          f"{MANIFEST.relative_to(ROOT)})")
    return wheels


# --------------------------------------------------------------------------- parts (children)


class Recorder:
    """A part's results, rewritten to its JSON file after every measurement.

    So what a part measured survives its being killed for time.
    """

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def set(self, **values: Any) -> None:
        """Set top-level fields."""
        self.data.update(values)
        self._flush()

    def append(self, key: str, row: dict[str, Any]) -> None:
        """Append a row to the list under ``key``."""
        self.data.setdefault(key, []).append(row)
        self._flush()

    def _flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


def _device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment() -> dict[str, Any]:
    """The device, library versions and host of this process."""
    import open_clip
    import torch

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
        "cuda": torch.version.cuda if cuda else None,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def part_decompose(cfg: dict[str, Any], rec: Recorder, out: Path) -> None:
    """Decomposition vs plain forward, agreement with float64 CPU, profiler tables."""
    import decompose_throughput as dt

    device = _device()
    for name in cfg["models"]:
        model = dt.build(name, device)
        for dtype in cfg["dtypes"]:
            row = dt.bench_model(model, name, cfg["batch"], cfg["iters"], cfg["warmup"], device,
                                 dtype)
            print(json.dumps(row), flush=True)
            rec.append("rows", row)
        for row in dt.agreement(model, cfg["dtypes"], device, cfg["agreement_images"]):
            print(json.dumps({"model": name, **row}), flush=True)
            rec.append("agreement", {"model": name, **row})
        if name == cfg["profile"][0]:
            try:
                tables = dt.profile_tables(model, cfg["batch"], device, cfg["profile"][1])
            except Exception as err:  # a profiler failure must not lose the measured rows
                rec.set(profile_error=f"{type(err).__name__}: {err}")
                continue
            text = "".join(f"## {kind}: {name}, batch {cfg['batch']}, {cfg['profile'][1]}\n\n"
                           f"{table}\n" for kind, table in tables.items())
            (out / "profile.txt").write_text(text)
            print(text, flush=True)
            rec.set(profile={"model": name, "dtype": cfg["profile"][1], "file": "profile.txt",
                             "decompose_top": tables["decompose"]})
        del model


def part_store(cfg: dict[str, Any], rec: Recorder, out: Path) -> None:
    """Store building (decompose + float16 writes) vs the plain forward."""
    import store_throughput as st

    args = argparse.Namespace(model=cfg["model"], device=str(_device()), n=cfg["n"],
                              batch_size=cfg["batch"], workers=cfg["workers"])
    result = st.throughput(args)
    rec.set(model=cfg["model"], n=cfg["n"], batch=cfg["batch"], **result)
    print(json.dumps(rec.data), flush=True)


def part_residual_epoch(cfg: dict[str, Any], rec: Recorder, out: Path) -> None:
    """One ResiDual-full and one linear-adapter epoch on ViT-L/14-sized cached data."""
    import residual_epoch as re_

    device = _device()
    problem = re_.make_problem(cfg["n"], cfg["n_classes"], device, shape=tuple(cfg["shape"]))
    rec.set(n=cfg["n"], n_lambda=problem["residual"].n_trainable,
            linear_params=problem["linear"].n_trainable)
    for batch in cfg["batch_sizes"]:
        t_res = re_.time_lean(problem["residual"], problem["residual_data"], batch, device)
        t_lin = re_.time_lean(problem["linear"], problem["linear_data"], batch, device)
        row = {"batch": batch, "steps": -(-cfg["n"] // batch), "residual_s": t_res,
               "linear_s": t_lin}
        print(json.dumps(row), flush=True)
        rec.append("rows", row)


def _child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the repository first on ``PYTHONPATH`` (this checkout's code)."""
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def part_chapter05(cfg: dict[str, Any], rec: Recorder, out: Path) -> None:
    """Chapter 05's ``standin`` preset through the runner (papermill), in a subprocess."""
    import csv

    work = Path(tempfile.mkdtemp(prefix="ch05-"))
    run = ["-m", "residual_core.runner", "run", "05", "--preset", "standin"]
    params = [arg for key, value in cfg["overrides"].items()
              for arg in ("--param", f"{key}={value!r}")]
    cmd = [sys.executable, *run, "--name", "standin", "--out", str(work / "executed"), *params]
    rec.set(mode="runner", command=" ".join(["python", *run, *params]))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT,
                   env=_child_env({"RESIDUAL_CACHE": str(work / "cache")}))
    wall = time.perf_counter() - start
    table = work / "executed" / "05_residual-standin.results.csv"
    record = json.loads(table.with_suffix(".json").read_text())
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    peak = max(float(r["peak_gpu_mib"] or "nan") for r in rows)  # empty (NaN) without CUDA
    shutil.copy(table, out / table.name)
    rec.set(wall_s=record["seconds"], process_s=wall, rows=len(rows),
            variants=[r["variant"] for r in rows], peak_gpu_mib=None if math.isnan(peak) else peak,
            accuracy={r["variant"]: float(r["accuracy"]) for r in rows}, table=table.name)
    print(json.dumps(rec.data), flush=True)


def part_pytest_gpu(cfg: dict[str, Any], rec: Recorder, out: Path) -> None:
    """``pytest -m gpu`` over the test suite; counts read from its JUnit XML."""
    import xml.etree.ElementTree as ET

    junit = Path(tempfile.mkdtemp(prefix="pytest-")) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--junitxml={junit}", *cfg["paths"]]
    proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(cfg["env"]))
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}.{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    rec.set(command=" ".join(["python -m pytest -m gpu", *cfg["paths"]]),
            returncode=proc.returncode,
            passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            failed=counts["failures"] + counts["errors"], skipped=counts["skipped"],
            failed_tests=failed)


PART_FUNCS: dict[str, Callable[[dict[str, Any], Recorder, Path], None]] = {
    "decompose": part_decompose, "store": part_store, "residual_epoch": part_residual_epoch,
    "chapter05": part_chapter05, "pytest_gpu": part_pytest_gpu,
}


def run_child_part(name: str, result: Path, out: Path, smoke: bool) -> None:
    """Body of ``gpu_suite.py part``: one part in this process, results into ``result``."""
    sys.path.insert(0, str(ROOT))
    rec = Recorder(result)
    rec.set(env=environment())
    PART_FUNCS[name]((SMOKE_SIZES if smoke else GPU_SIZES)[name], rec, out)


# --------------------------------------------------------------------------- orchestration


def run_part(cmd: Sequence[str], result: Path, timeout: float, log,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one part's process for at most ``timeout`` s; its output goes to stdout and ``log``.

    Returns:
        What the part recorded, with ``status`` (``ok``, ``failed``, ``timed out``,
        ``skipped``), ``seconds`` and ``budget_s``.
    """
    if timeout < 5:
        return {"status": "skipped", "reason": "no time left", "seconds": 0.0,
                "budget_s": round(timeout, 1)}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env({"PYTHONUNBUFFERED": "1", **(env or {})}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: a timeout kills it all
    tail: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
            tail.append(line)
            del tail[:-40]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=5)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        status = "timed out"
    reader.join(timeout=5)
    sys.stdout.flush()
    log.flush()
    data = json.loads(result.read_text()) if result.exists() else {}
    data.update(status=status, seconds=round(time.perf_counter() - start, 1),
                budget_s=round(timeout, 1))
    if status == "failed":
        data.update(returncode=proc.returncode, error="".join(tail[-15:]))
    return data


def _git_tree(root: Path = ROOT) -> str | None:
    """The git tree of the files as they are (tracked + untracked, not ignored), or ``None``.

    A device machine gets the working tree with the ``.git`` of the session's start, so its
    HEAD can be older than the code that ran: the tree names the code itself, and ``render``
    finds the commit holding it (:func:`commit_of_tree`).
    """
    with tempfile.TemporaryDirectory(prefix="gpu-suite-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        try:
            for cmd in (["git", "add", "-A"], ["git", "write-tree"]):
                out = subprocess.run(cmd, cwd=root, text=True, capture_output=True,
                                     timeout=60, env=env)
                if out.returncode != 0:
                    return None
        except (OSError, subprocess.TimeoutExpired):
            return None
    return out.stdout.strip() or None


def commit_of_tree(tree: str, root: Path = ROOT) -> str | None:
    """The newest commit here whose tree is ``tree`` (short hash), or ``None``."""
    out = subprocess.run(["git", "log", "--all", "--format=%h %T"], cwd=root, text=True,
                         capture_output=True, timeout=60)
    return next((c for c, t in (line.split() for line in out.stdout.splitlines()) if t == tree),
                None)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """``results.json`` and ``results.md`` (atomically)."""
    for name, text in (("results.json", json.dumps(results, indent=1, default=str) + "\n"),
                       ("results.md", results_markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def run_suite(out: Path, *, smoke: bool = False, parts: Sequence[str] = PARTS,
              t0: float | None = None) -> dict[str, Any]:
    """Run the parts one after another within the deadline; write the outputs after each.

    Args:
        out: Folder for ``results.json``, ``results.md``, ``suite.log``, ``profile.txt`` and
            chapter 05's results table.
        smoke: CPU, tiny sizes, a generous budget per part.
        parts: Which parts (default all, in order).
        t0: When the run started (epoch seconds; the shell's start, so the wheel install counts).

    Returns:
        The results (also in ``out/results.json``).
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time() if t0 is None else t0
    budgets = {p: SMOKE_BUDGET_S if smoke else BUDGET_S[p] for p in parts}
    deadline = t0 + (SMOKE_BUDGET_S * len(parts) if smoke else DEADLINE_S)
    results: dict[str, Any] = {
        "suite": "gpu_suite", "smoke": smoke, "env": None,
        "started": datetime.datetime.fromtimestamp(t0, datetime.UTC).isoformat(
            timespec="seconds"),
        "commit": _git_commit(), "tree": _git_tree(), "deadline_s": deadline - t0,
        "budgets_s": budgets,
        "sizes": SMOKE_SIZES if smoke else GPU_SIZES, "targets": TARGETS, "parts": {},
    }
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    try:
        with open(out / "suite.log", "a") as log:
            for i, name in enumerate(parts):
                # Its budget plus what earlier parts left unused; later parts keep theirs.
                allowed = deadline - time.time() - sum(budgets[p] for p in parts[i + 1:])
                banner = f"\n=== [gpu-suite] {name}: up to {allowed:.0f} s ===\n"
                print(banner, end="", flush=True)
                log.write(banner)
                result = work / f"{name}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "part", name,
                       "--result", str(result), "--out", str(out)] + (["--smoke"] if smoke else [])
                # Temporary files (stores, caches) under `work`: removed even after a kill.
                data = run_part(cmd, result, allowed, log, {"TMPDIR": str(work)})
                results["env"] = results["env"] or data.pop("env", None)
                data.pop("env", None)
                results["parts"][name] = data
                results["wall_s"] = round(time.time() - t0, 1)
                write_outputs(results, out)
                banner = f"=== [gpu-suite] {name}: {data['status']} in {data['seconds']} s ===\n"
                print(banner, end="", flush=True)
                log.write(banner)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + summary_markdown(results), flush=True)
    return results


# --------------------------------------------------------------------------- reporting


def _find(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in key.items())), None)


def _verdict(value: float | None, target: tuple[str, float, str] | None) -> str:
    if target is None or value is None:
        return "–" if target is None else ""
    op, bound, _ = target
    if (value >= bound) if op == ">=" else (value <= bound):
        return "yes"
    short = (bound - value) / bound if op == ">=" else (value - bound) / bound
    return f"**no**: {short:.0%} {'short of' if op == '>=' else 'over'} the target"


def summary_rows(results: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """The GPU table: (measurement, target, value, met) rows, whatever state the run is in."""
    sizes = (results or {}).get("sizes") or GPU_SIZES
    parts = (results or {}).get("parts", {})
    rows: list[tuple[str, str, str, str]] = []

    def missing(part: str) -> str | None:
        if results is None:
            return "not measured yet"
        data = parts.get(part)
        if data is None:
            return "not run"
        if data["status"] == "ok":
            return None
        return {"timed out": f"timed out after {data.get('seconds', 0):.0f} s",
                "failed": "failed (see results.md)", "skipped": "skipped: no time left"
                }.get(data["status"], data["status"])

    def add(label: str, part: str, fn: Callable[[dict[str, Any]], tuple[str, float | None]],
            target: str | None = None) -> None:
        note = missing(part)
        spec = TARGETS.get(target) if target else None
        target_text = f"{'≥' if spec[0] == '>=' else '≤'} {spec[1]:g}{spec[2]}" if spec else "–"
        try:  # what a part measured before it failed or ran out of time still shows
            text, value = fn(parts[part])
        except (KeyError, TypeError, IndexError):
            if note is None:
                note = "not measured (part stopped early)"
            rows.append((label, target_text, note, "" if spec else "–"))
            return
        suffix = "" if note is None else f" ({parts[part]['status']} later)"
        rows.append((label, target_text, text + suffix, _verdict(value, spec)))

    dec = sizes["decompose"]
    for model in reversed(dec["models"]):
        for dtype in dec["dtypes"]:
            def ratio(d, model=model, dtype=dtype):
                r = _find(d["rows"], model=model, dtype=dtype)
                return (f"{r['ratio']:.2f} ({r['decompose_img_s']:,.0f} vs "
                        f"{r['plain_img_s']:,.0f} img/s)", r["ratio"])

            def mem(d, model=model, dtype=dtype):
                r = _find(d["rows"], model=model, dtype=dtype)
                if r["mem_ratio"] is None:
                    return "– (CPU)", None
                return (f"{r['mem_ratio']:.2f} ({r['decompose_peak_gib']:.2f} vs "
                        f"{r['plain_peak_gib']:.2f} GiB)", r["mem_ratio"])

            main = model == dec["models"][-1] and dtype == dec["dtypes"][0]
            where = f"{model}, batch {dec['batch']}, {dtype}"
            add(f"`decompose` ÷ plain `encode_image`, img/s: {where}", "decompose", ratio,
                "decompose_ratio" if main else None)
            add(f"peak memory, `decompose` ÷ plain: {where}", "decompose", mem,
                "decompose_mem_ratio" if main else None)
    for model in reversed(dec["models"]):
        def agree(d, model=model):
            rs = [r for r in d["agreement"] if r["model"] == model]
            if not rs:
                raise KeyError(model)
            return ", ".join(f"{r['dtype']} {r['max_rel_err']:.1e}" for r in rs), None

        add(f"max per-unit error vs float64 CPU, {dec['agreement_images']} images, ÷ embedding "
            f"norm: {model}", "decompose", agree)
    st = sizes["store"]
    add(f"store (decompose + fp16 writes) ÷ plain forward, img/s: {st['model']}, "
        f"{st['n']:,} images, batch {st['batch']}", "store",
        lambda d: (f"{d['ratio']:.2f} ({d['store_img_s']:,.0f} vs {d['plain_img_s']:,.0f} "
                   f"img/s)", d["ratio"]), "store_ratio")
    ep = sizes["residual_epoch"]
    for batch in ep["batch_sizes"]:
        def res(d, batch=batch):
            r = _find(d["rows"], batch=batch)
            return f"{r['residual_s']:.3f} s ({d['n_lambda']:,} λ)", r["residual_s"]

        def lin(d, batch=batch):
            r = _find(d["rows"], batch=batch)
            return f"{r['linear_s']:.3f} s", None

        first = batch == ep["batch_sizes"][0]
        add(f"ResiDual-full epoch, {ep['n']:,} samples, batch {batch}", "residual_epoch", res,
            "residual_epoch_s" if first else None)
        add(f"linear-adapter epoch, same data, batch {batch}", "residual_epoch", lin)
    add("chapter 05 `run 05 --preset standin` (through the runner): wall time", "chapter05",
        lambda d: (f"{d['wall_s']:.0f} s ({d['rows']} variants)", None))
    add("chapter 05 standin: peak GPU memory (`peak_gpu_mib`)", "chapter05",
        lambda d: ("– (CPU)" if d["peak_gpu_mib"] is None
                   else f"{d['peak_gpu_mib']:,.0f} MiB", None))

    def tests(d):
        return (f"{d['passed']} passed, {d['failed']} failed, {d['skipped']} skipped",
                None)

    add("`pytest -m gpu` (device-specific paths)", "pytest_gpu", tests)
    # The tests' own target: all pass.
    label, target, value, _ = rows[-1]
    if not value.startswith(("not ", "timed", "failed", "skipped")):
        ok = parts["pytest_gpu"]["failed"] == 0 and parts["pytest_gpu"]["passed"] > 0
        rows[-1] = (label, "all pass", value, "yes" if ok else "**no**")
    else:
        rows[-1] = (label, "all pass", value, "")
    return rows


def _header(results: dict[str, Any] | None) -> str:
    if results is None:
        return ("GPU rows: **not measured yet**: no GPU run of `benchmarks/gpu_suite.sh` so far "
                "(see *Running the GPU suite* below).")
    env = results.get("env") or {}
    date = results["started"][:10]
    if results.get("runs"):  # several runs merged: which parts ran at which commit
        where = "; ".join(f"{', '.join(run['parts'])} at {run['commit'] or 'an unknown commit'}"
                          for run in results["runs"])
        return (f"GPU runs of `benchmarks/gpu_suite.sh` on **{env.get('device', '?')}**, {date} "
                f"({len(results['runs'])} runs, failed parts rerun after fixes; each row from "
                f"the last run of its part): {where}. torch {env.get('torch', '?')}, open_clip "
                f"{env.get('open_clip', '?')}, Python {env.get('python', '?')}.")
    commit = f", commit {results['commit']}" if results.get("commit") else ""
    kind = "Smoke run (CPU, tiny sizes)" if results.get("smoke") else "GPU run"
    return (f"{kind} of `benchmarks/gpu_suite.sh` on **{env.get('device', '?')}**, "
            f"{date}{commit}: torch {env.get('torch', '?')}, open_clip "
            f"{env.get('open_clip', '?')}, Python {env.get('python', '?')}; the whole suite "
            f"{results.get('wall_s', 0):.0f} s.")


def summary_markdown(results: dict[str, Any] | None) -> str:
    """The header line and the GPU table (what goes into the README)."""
    lines = [_header(results), "", "| measurement | target | measured | met |",
             "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(results)]
    return "\n".join(lines) + "\n"


def results_markdown(results: dict[str, Any]) -> str:
    """``results.md``: the summary, then every part's status and details."""
    out = ["# GPU suite results", "", summary_markdown(results), "## Parts", "",
           "| part | status | seconds | budget s |", "|---|---|---|---|"]
    for name, data in results["parts"].items():
        out.append(f"| {name} | {data['status']} | {data['seconds']} | {data['budget_s']} |")
    for name, data in results["parts"].items():
        if data.get("error"):
            out += ["", f"### {name}: error", "", "```", data["error"].rstrip(), "```"]
    dec = results["parts"].get("decompose", {})
    if dec.get("profile"):
        prof = dec["profile"]
        out += ["", f"## Profile: `decompose`, {prof['model']}, {prof['dtype']} (top operators; "
                f"the plain forward's in {prof['file']})", "", "```",
                prof["decompose_top"].rstrip(), "```"]
    failed = results["parts"].get("pytest_gpu", {}).get("failed_tests")
    if failed:
        out += ["", "## Failed GPU tests", "", *[f"- {t}" for t in failed]]
    return "\n".join(out) + "\n"


def render_readme(text: str, results: dict[str, Any] | None) -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` rendered from ``results``.

    Raises:
        ValueError: If the markers are missing, repeated or out of order.
    """
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the README needs exactly one {BEGIN!r} … {END!r} block")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{summary_markdown(results)}{END}{tail}"


def merge_runs(runs: Sequence[dict[str, Any]],
               commits: Sequence[str | None] | None = None) -> dict[str, Any]:
    """Several runs' results as one: each part from the last run that has it.

    Args:
        runs: ``results.json`` contents, oldest first (a rerun of failed parts comes last).
        commits: The commit each run's code was, when known better than the run's own record
            (default: the commit holding the run's ``tree``, else its ``commit``).

    Returns:
        Results with ``parts`` merged and ``runs``: per run, its start, commit and the parts
        taken from it.

    Raises:
        ValueError: For no runs, a smoke run among GPU runs, or runs on different devices.
    """
    if not runs:
        raise ValueError("no runs to merge")
    if len({bool(r.get("smoke")) for r in runs}) > 1:
        raise ValueError("cannot merge smoke runs with GPU runs")
    devices = {(r.get("env") or {}).get("device") for r in runs} - {None}
    if len(devices) > 1:
        raise ValueError(f"runs on different devices: {sorted(devices)}")
    commits = list(commits) if commits else [None] * len(runs)
    if len(commits) != len(runs):
        raise ValueError(f"{len(commits)} commits for {len(runs)} runs")
    if len(runs) == 1:  # one run keeps its form; its commit is the one holding its code
        tree = runs[0].get("tree")
        found = commits[0] or (commit_of_tree(tree) if tree else None)
        return {**runs[0], "commit": found or runs[0].get("commit")}
    # The last run's own commit, tree and wall time would misname the others: ``runs`` says.
    merged = {k: v for k, v in runs[-1].items() if k not in ("commit", "tree", "wall_s")}
    merged.update(parts={}, runs=[])
    merged["env"] = next((r["env"] for r in reversed(runs) if r.get("env")), None)
    merged["started"] = runs[0]["started"]
    owner: dict[str, int] = {}
    for i, run in enumerate(runs):
        for name, data in run["parts"].items():
            merged["parts"][name] = data
            owner[name] = i
    merged["parts"] = {p: merged["parts"][p] for p in PARTS if p in merged["parts"]}
    for i, run in enumerate(runs):
        commit = commits[i] or (commit_of_tree(run["tree"]) if run.get("tree") else None)
        merged["runs"].append({"started": run["started"], "commit": commit or run.get("commit"),
                               "tree": run.get("tree"), "wall_s": run.get("wall_s"),
                               "parts": [p for p in merged["parts"] if owner[p] == i]})
    merged["runs"] = [r for r in merged["runs"] if r["parts"]]
    return merged


def render(source: Path | Sequence[Path] | None = None, readme: Path = README,
           record: Path = RECORD, *, allow_smoke: bool = False, check: bool = False,
           commits: Sequence[str | None] | None = None) -> str:
    """Render the README's GPU table from a run's ``results.json``.

    Args:
        source: A run's ``results.json``, or several (oldest first, merged by
            :func:`merge_runs`): written to ``record`` first. ``None`` renders the committed
            ``record`` (or "not measured yet" without one).
        readme: The README to rewrite.
        record: Where the last GPU run's results are kept in the repository.
        allow_smoke: Accept a smoke run's results (tests only: a README shows GPU runs).
        check: Change nothing; raise if ``readme`` is not what rendering would write.
        commits: The commit of each source's code (see :func:`merge_runs`).

    Returns:
        The rendered table.

    Raises:
        ValueError: For smoke results without ``allow_smoke``, or a stale README on ``check``.
    """
    if source is not None:
        sources = [source] if isinstance(source, (str, Path)) else list(source)
        results = merge_runs([json.loads(Path(p).read_text()) for p in sources], commits)
        if results.get("smoke") and not allow_smoke:
            raise ValueError(f"{source} is a smoke run (CPU, tiny sizes); the README shows GPU "
                             "runs only (allow_smoke=True / --allow-smoke for a test)")
        if not check:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(results, indent=1) + "\n")
    else:
        results = json.loads(record.read_text()) if record.exists() else None
    text = readme.read_text()
    new = render_readme(text, results)
    if check:
        if new != text:
            raise ValueError(f"{readme}'s GPU table is stale: run python benchmarks/gpu_suite.py "
                             "render")
    else:
        readme.write_text(new)
    return summary_markdown(results)


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="download the manifest's wheels into .whl/")
    p.add_argument("--dest", type=Path, default=WHEELS)
    p.add_argument("--refresh", action="store_true",
                   help="record the downloaded files and hashes in the manifest")
    p = sub.add_parser("verify", help="check .whl/ against the manifest")
    p.add_argument("--dest", type=Path, default=WHEELS)
    p = sub.add_parser("run", help="run the suite, writing OUT/results.json and results.md")
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p = sub.add_parser("part", help="(internal) one part in this process")
    p.add_argument("name", choices=PARTS)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true")
    p = sub.add_parser("render", help="render the README's GPU table from results.json")
    p.add_argument("source", type=Path, nargs="*", default=None,
                   help="results.json of a run, or of several runs oldest first (merged)")
    p.add_argument("--commits", nargs="+", default=None,
                   help="the commit each source's code was (a device's own .git may be older)")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--allow-smoke", action="store_true")
    p.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args(argv)

    if args.command == "prepare":
        prepare(args.dest, refresh=args.refresh)
    elif args.command == "verify":
        problems = check_wheels(args.dest, read_manifest())
        if problems:
            print(f"{args.dest} does not match {MANIFEST.name}:\n  " + "\n  ".join(problems),
                  file=sys.stderr)
            return 1
        print(f"{args.dest}: the {len(read_manifest()['wheels'])} wheels of {MANIFEST.name}")
    elif args.command == "run":
        t0 = float(os.environ["GPU_SUITE_T0"]) if os.environ.get("GPU_SUITE_T0") else None
        run_suite(args.out, smoke=args.smoke, parts=args.parts, t0=t0)
    elif args.command == "part":
        run_child_part(args.name, args.result, args.out, args.smoke)
    elif args.command == "render":
        try:
            for commit in args.commits or []:
                if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT,
                                  capture_output=True).returncode != 0:
                    raise ValueError(f"--commits: {commit!r} is not a commit of this repository")
            print(render(args.source or None, args.readme, allow_smoke=args.allow_smoke,
                         check=args.check, commits=args.commits), end="")
        except ValueError as err:
            print(err, file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
