#!/usr/bin/env bash
# The GPU benchmark suite in one command (issue 9); see scripts/gpu_suite.py.
#
#   scripts/gpu_suite.sh             # on a CUDA machine: JSON, PNGs, traces into $OUT
#   scripts/gpu_suite.sh --dry-run   # the same steps on the CPU, small sizes (CI runs it)
#
# On a lent machine with no package index, first send the parts of scripts/device_pack.sh
# (see there): they install the pinned packages, ffmpeg, the weights and the reading.
# Elsewhere, on a bare CUDA machine (torch already there) it installs what is missing:
# from wheels in .whl/ when that folder exists, else from requirements-gpu.txt; ffmpeg
# from the system, else the static binary of imageio-ffmpeg.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# A lent machine with no package index: what scripts/device_pack.sh packed, sent a part per
# call (see there). Parts still to come: say so and stop here; all there: use them. Never
# in a dry run (a CPU machine: its own packages, and a pack made there stays as it is).
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
if [ "$dry" = 0 ] && { [ -d .devpack ] || [ -d .devstore ]; }; then
    rc=0
    bash scripts/device_unpack.sh || rc=$?
    if [ "$rc" -eq 3 ]; then exit 0; fi
    if [ "$rc" -ne 0 ]; then exit "$rc"; fi
    export PYTHONPATH=$PWD/.devstore/site${PYTHONPATH:+:$PYTHONPATH}
    export PATH=$PWD/.devstore/bin:$PATH
fi

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
