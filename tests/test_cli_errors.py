"""Every command line ends a user error with a short message and exit 2, never a traceback.

Each case is a probe of issue #14, run as a user runs it: ``python -m ...`` in a subprocess
(so the error class is the one a second import raises, as ``sweep`` does).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_runner import write_notebook

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ["-m", "residual_core.runner"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def assert_user_error(done: subprocess.CompletedProcess, *says: str) -> None:
    text = done.stdout + done.stderr
    assert done.returncode == 2, text
    assert "Traceback" not in done.stderr, done.stderr
    for part in says:
        assert part in done.stderr, done.stderr


@pytest.fixture(scope="module")
def a_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "a-file"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize(("args", "says"), [
    # 6. an empty task list failed deep in the chapter ("No objects to concatenate", ...)
    (["run", "03", "--param", "tasks=[]"], ["tasks=[]: expects a non-empty list"]),
    (["run", "05", "--param", "tasks=[]"], ["tasks=[]: expects a non-empty list"]),
    # values of the wrong type or range: refused before a kernel starts
    (["run", "00", "--param", "n_images=1.5"], ["n_images=1.5: expects an int ≥ 1"]),
    (["run", "00", "--param", "n_images=True"], ["got the bool True"]),
    (["run", "00", "--param", "model=[1,2]"], ["model=[1, 2]: expects a model key"]),
    # --dry-run checks the same
    (["run", "05", "--dry-run", "--param", "model=nope"], ["model='nope': is not a model key"]),
    (["run", "00", "--dry-run", "--param", "images_from=nope"], ["is not a dataset"]),
    (["run", "05", "--dry-run", "--param", "tasks=['mnist','nope']"],
     ["item 1 ('nope') is not a dataset"]),
    (["run", "05", "--dry-run", "--param", "train_size=-5"], ["train_size=-5: expects an int"]),
    (["book", "--profile", "nope", "--dry-run"], ["no chapter has a run named 'nope'",
                                                  "profiles: tutorial, paper"]),
    (["book", "--profile", "papr"], ["did you mean 'paper'?"]),
    # malformed options
    (["sweep", "05", "--axis", "model", "--dry-run"], ["--axis expects name=v1,v2"]),
    (["sweep", "05", "--axis", "tasks=[1,2", "--dry-run"], ["must be a Python list literal"]),
    (["sweep", "05", "--axis", "model=clip_b,,clip_l", "--dry-run"], ["empty value"]),
    (["sweep", "05", "--axis", "model=clip_b", "--axis", "model=clip_l", "--dry-run"],
     ["--axis model is given twice"]),
    (["sweep", "05", "--axis", "model=nope", "--dry-run"], ["model='nope': is not a model key"]),
    (["run", "00", "--timeout", "0"], ["--timeout must be at least 1 second"]),
    (["book", "--jobs", "0"], ["--jobs must be a whole number of chapters ≥ 1, got 0"]),
    (["book", "--threads", "0"], ["--threads must be a whole number of CPU threads ≥ 1, got 0"]),
    (["book", "--jobs", "two", "--dry-run"], ["--jobs: invalid int value: 'two'"]),
])
def test_runner_refuses_bad_input_with_exit_2(args, says):
    assert_user_error(cli(*RUNNER, *args), *says)


def test_unwritable_out_is_refused_up_front(a_file: Path):
    assert_user_error(cli(*RUNNER, "run", "00", "--preset", "smoke", "--out", str(a_file)),
                      f"--out {a_file} is a file, not a folder")
    assert_user_error(cli(*RUNNER, "run", "00", "--out", "/proc/residual-nope"),
                      "--out /proc/residual-nope cannot be written")
    assert_user_error(cli(*RUNNER, "sweep", "01", "--preset", "smoke", "--axis", "seed=0,1",
                          "--out", str(a_file / "sub")), "cannot be written")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_names_the_parameter(tmp_path: Path):
    assert_user_error(cli(*RUNNER, "run", "00", "--param", "device=cuda"),
                      "device='cuda', but torch finds no CUDA GPU", "use device='cpu'")
    assert_user_error(cli(*RUNNER, "sweep", "01", "--preset", "smoke", "--axis", "seed=0",
                          "--param", "device=cuda:1", "--out", str(tmp_path)),
                      "device='cuda:1', but torch finds no CUDA GPU")
    assert_user_error(cli(*RUNNER, "book", "--profile", "paper"), "00_units.py: device='cuda'")


def test_a_cell_past_the_timeout_names_the_cell_and_the_limit(tmp_path: Path):
    nb = write_notebook(tmp_path / "01_slow.py", '# %% tags=["parameters"]\nn = 1',
                        "# %%\nx = n + 1", "# %%\nimport time\ntime.sleep(60)")
    done = cli(*RUNNER, "run", str(nb), "--timeout", "2", "--out", str(tmp_path / "out"))
    assert_user_error(done, "code cell 3", "ran past the per-cell timeout of 2 s (--timeout)",
                      "time.sleep(60)", "01_slow-tutorial.failed.ipynb")
    assert len(done.stderr.splitlines()) < 12, done.stderr


def test_zeroshot_cli_refuses_unknown_model_and_distribution():
    done = cli("-m", "residual_core.analysis.zeroshot", "--model", "nope")
    assert_user_error(done, "unknown model 'nope'", "valid keys: tutorial")
    done = cli("-m", "residual_core.analysis.zeroshot", "--distributions", "mars")
    assert_user_error(done, "invalid choice: 'mars'")


def test_paper_datasets_cli_refuses_a_file_as_root(a_file: Path):
    assert_user_error(cli("-m", "residual_core.data.paper", "--root", str(a_file)),
                      f"the data root {a_file} (from root) is a file, not a folder")
