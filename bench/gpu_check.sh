#!/usr/bin/env bash
# The GPU day in one command (README: "One prepared GPU run"): installs what the machine lacks from
# bench/wheels/ (no registry needed), says what is still missing, then runs the check.
#   bash bench/gpu_check.sh --out "$OUT"             # one CUDA GPU, at most 6 minutes (--budget)
#   bash bench/gpu_check.sh --device cpu --size tiny --out /tmp/x   # the test suite's run
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -d bench/wheels ]; then
  "$PY" -m pip install -q --no-index --find-links bench/wheels -r bench/gpu_wheels.txt
fi
"$PY" - <<'PYEOF'
import importlib.util, sys
need = ("torch", "torchvision", "timm", "numpy", "yaml", "tqdm", "PIL")
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu-check: {', '.join(missing)} not installed: run bench/fetch_wheels.sh where a "
             "package registry is reachable and bring bench/wheels/ along")
PYEOF
exec "$PY" -m bench.gpu_check "$@"
