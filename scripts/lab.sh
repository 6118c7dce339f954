#!/usr/bin/env bash
# JupyterLab on the chapters (`make lab`): the py:percent sources open as notebooks through
# jupytext and edits are saved back to the .py files. Offline; extra arguments go to jupyter lab.
set -euo pipefail
cd "$(dirname "$0")/.."
settings=.jupyter-lab
mkdir -p "$settings"
cp -rn scripts/lab-settings/. "$settings/"  # the defaults; a teacher's own changes are kept
export JUPYTERLAB_SETTINGS_DIR="$PWD/$settings"
args=(--ServerApp.root_dir="$PWD/notebooks" --LabApp.extension_manager=readonly)  # no PyPI calls
[ "$(id -u)" = 0 ] && args+=(--allow-root)  # containers and CI machines often run as root
exec .venv/bin/jupyter lab "${args[@]}" "$@"
