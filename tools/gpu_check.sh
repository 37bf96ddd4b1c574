#!/usr/bin/env bash
# The GPU proof (tools/gpu_check.py) with the project's interpreter. From the repository root:
#
#     bash tools/gpu_check.sh --out "$OUT"          # one CUDA GPU, at most 8 minutes
#     bash tools/gpu_check.sh --cpu-smoke --out /tmp/smoke
#
# Uses .venv/bin/python when that interpreter starts (a venv carried from another machine may
# point at a Python that is not installed there), else python3 on the PATH; the env part of the
# check then names every package that is missing. Exit code: 0 all parts passed, 1 a part failed,
# 2 bad arguments.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="$root/.venv/bin/python"
if ! "$py" -c "" >/dev/null 2>&1; then
    py="$(command -v python3 || true)"
    if [ -z "$py" ]; then
        echo "gpu_check.sh: error: neither $root/.venv/bin/python nor python3 runs" >&2
        exit 2
    fi
    echo "gpu_check.sh: $root/.venv/bin/python does not run; using $py" >&2
fi
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" "$root/tools/gpu_check.py" --python "$py" "$@"
