#!/usr/bin/env bash
# The GPU suite in one command (benchmarks/gpu_suite.py says what it measures).
#
#   bash benchmarks/gpu_suite.sh --prepare      here, with PyPI: the wheels into .whl/, checked
#   bash benchmarks/gpu_suite.sh OUT            on the GPU machine: install .whl/, run every part
#                                               (<= 9 min in all), write OUT/results.{json,md}
#   bash benchmarks/gpu_suite.sh OUT --parts P… the same for some parts (a rerun of failed ones;
#                                               `render` merges it with the earlier results)
#   bash benchmarks/gpu_suite.sh --smoke OUT    CPU, tiny sizes, nothing installed (the tests)
#   bash benchmarks/gpu_suite.sh --exec CMD…    on the GPU machine: install .whl/, then run CMD
#                                               (e.g. the tutorial model's training there)
#
# PYTHON picks the interpreter (default python3, the one holding torch on the GPU machine).
set -euo pipefail
T0=$(date +%s)  # the 9 minutes count from here: the wheel install is part of them
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
usage="usage: bash benchmarks/gpu_suite.sh --prepare | OUT [--parts PART...] | --smoke OUT | --exec CMD..."

case "${1:-}" in
  --prepare) exec "$PY" benchmarks/gpu_suite.py prepare ;;
  --smoke) [ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
           exec "$PY" benchmarks/gpu_suite.py run --smoke "$2" ;;
  --exec) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; } ;;
  ""|-*) echo "$usage" >&2; exit 2 ;;
esac
[ "$1" = --exec ] || [ $# -eq 1 ] || [ "${2:-}" = --parts ] || { echo "$usage" >&2; exit 2; }

whl=${GPU_SUITE_WHEELS:-.whl}  # the tests point it elsewhere
if [ -d "$whl" ]; then
  # Exactly the manifest's wheels, installed apart from the machine's own packages.
  "$PY" benchmarks/gpu_suite.py verify --dest "$whl"
  site=${GPU_SUITE_SITE:-/tmp/gpu-suite-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$whl"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "[gpu-suite] installed $(ls "$whl"/*.whl | wc -l) wheels into $site in $(( $(date +%s) - T0 )) s"
else
  echo "[gpu-suite] no .whl/: using the installed packages (run --prepare here and carry .whl" \
       "to a machine without open_clip_torch, schedulefree, ftfy and papermill)" >&2
fi
if [ "$1" = --exec ]; then
  shift
  exec "$@"
fi
GPU_SUITE_T0=$T0 exec "$PY" benchmarks/gpu_suite.py run "$@"
