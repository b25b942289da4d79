#!/usr/bin/env bash
# The GPU benchmark suite in one command (issue 9); see scripts/gpu_suite.py.
#
#   scripts/gpu_suite.sh             # on a CUDA machine: JSON, PNGs, traces into $OUT
#   scripts/gpu_suite.sh --dry-run   # the same steps on the CPU, small sizes (CI runs it)
#
# On a bare CUDA machine (torch already there) it installs what is missing: from wheels in
# .whl/ when that folder exists (machines with no package index), else from
# requirements-gpu.txt; ffmpeg from the system, else the static binary of imageio-ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

missing=$("$PY" - <<'PY'
import importlib.util
need = {"transformers": "transformers", "aiohttp": "aiohttp", "ffmpeg": "ffmpeg-python",
        "jiwer": "jiwer", "psutil": "psutil", "matplotlib": "matplotlib"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
    echo "[gpu_suite] installing: $missing"
    if [ -d .whl ]; then
        "$PY" -m pip install -q --no-index --no-deps --target /tmp/gpu-suite-site .whl/*.whl
        export PYTHONPATH=/tmp/gpu-suite-site${PYTHONPATH:+:$PYTHONPATH}
    else
        "$PY" -m pip install -q -r requirements-gpu.txt matplotlib
    fi
fi
if ! command -v ffmpeg >/dev/null; then
    bin=$("$PY" -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())" 2>/dev/null || true)
    if [ -z "$bin" ]; then
        echo "error: ffmpeg is not installed (apt-get install ffmpeg, or carry an imageio-ffmpeg wheel in .whl/)" >&2
        exit 2
    fi
    mkdir -p /tmp/gpu-suite-bin && ln -sf "$bin" /tmp/gpu-suite-bin/ffmpeg
    export PATH=/tmp/gpu-suite-bin:$PATH
fi
exec "$PY" scripts/gpu_suite.py "$@"
