"""`make lab`: JupyterLab starts offline; chapters open as notebooks and save back to .py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "residual-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, path: str, method: str = "GET", body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


@pytest.fixture
def lab(tmp_path):
    """The lab of `make lab` on a copy of the repository's launcher, chapters and settings."""
    if not (ROOT / ".venv" / "bin" / "jupyter").exists():
        pytest.skip("no .venv with jupyter (run `make setup`)")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "lab.sh", repo / "scripts" / "lab.sh")
    shutil.copytree(ROOT / "scripts" / "lab-settings", repo / "scripts" / "lab-settings")
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    (repo / ".venv").symlink_to(ROOT / ".venv")
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        ["bash", "scripts/lab.sh", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}"],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(120):
            try:
                call(port, "/api/status")
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited: {proc.stdout.read()[-3000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("jupyter lab did not answer within 60 s")
        yield repo, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chapters_open_as_notebooks_and_save_back_to_py(lab):
    repo, port = lab
    model = call(port, "/api/contents/00_units.py?type=notebook&content=1")
    assert model["type"] == "notebook"
    cells = model["content"]["cells"]
    params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and "model = " in "".join(params[0]["source"])

    cells.append({"cell_type": "markdown", "metadata": {}, "source": "An exercise, edited live."})
    call(port, "/api/contents/00_units.py", "PUT",
         {"type": "notebook", "format": "json", "content": model["content"]})
    text = (repo / "notebooks" / "00_units.py").read_text()
    assert text.rstrip().endswith("# An exercise, edited live.")
    assert jupytext.reads(text, fmt="py:percent").cells[-1].source == "An exercise, edited live."
    assert not list((repo / "notebooks").glob("*.ipynb"))  # no paired copy left behind


def test_py_files_open_with_the_jupytext_viewer(lab):
    _, port = lab
    settings = call(port, "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    assert settings["settings"]["defaultViewers"]["python"] == "Jupytext Notebook"
    extensions = call(port, "/lab/api/extensions")
    assert any(e["name"] == "jupyterlab-jupytext" and e["enabled"] for e in extensions)
