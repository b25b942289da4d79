#!/usr/bin/env bash
# On the lent GPU machine: store the parts of scripts/device_pack.sh that came with this
# call (.devpack/K) in .devstore/ (ignored by git, so the warm machine keeps it between
# calls) and, once every part is there, check the whole against its sha256 and install it:
# wheels into .devstore/site, ffmpeg into .devstore/bin, the reading into testsets/.
# Run by scripts/gpu_suite.sh. Exit status: 0 installed (or already), 3 parts still to
# come (not an error: the call that brings the last one runs the suite), 1 a broken pack.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
store=.devstore
mkdir -p "$store/parts"
for d in .devpack/*/; do
    [ -f "$d/part" ] || continue
    k=$(basename "$d")
    mv "$d/part" "$store/parts/$k"
    cp "$d/MANIFEST" "$store/MANIFEST.$k"
    echo "[device_unpack] stored part $k"
done
rm -rf .devpack
manifests=("$store"/MANIFEST.*)
if [ ! -f "${manifests[0]}" ]; then
    [ -f "$store/ready" ] && exit 0
    echo "error: no device pack here (scripts/device_pack.sh, then carry .devpack/1, 2, ...)" >&2
    exit 1
fi
field() { awk -v k="$1" '$1 == k { print $2 }' "${manifests[0]}"; }
n=$(field parts); sum=$(field sha256); reading=$(field reading)
for m in "${manifests[@]}"; do  # parts of another pack (a re-made one): start again
    if [ "$(awk '$1 == "sha256" { print $2 }' "$m")" != "$sum" ]; then
        echo "error: parts of two different packs in $store; send every part of one pack again" >&2
        rm -rf "$store"
        exit 1
    fi
done
if [ -f "$store/ready" ] && [ "$(cat "$store/ready")" = "$sum" ]; then
    exit 0
fi
if [ "$(cat "$store/extracted" 2>/dev/null)" != "$sum" ]; then
    missing=()
    for i in $(seq 1 "$n"); do [ -f "$store/parts/$i" ] || missing+=("$i"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "[device_unpack] have $((n - ${#missing[@]})) of $n parts; still to send: ${missing[*]}" \
             "(a machine that went back in between starts bare: then send them all again)"
        exit 3
    fi
    for i in $(seq 1 "$n"); do cat "$store/parts/$i"; done > "$store/pack.tar"
    if [ "$(sha256sum "$store/pack.tar" | cut -d' ' -f1)" != "$sum" ]; then
        echo "error: the device pack's sha256 does not match; send every part again" >&2
        rm -rf "$store"
        exit 1
    fi
    rm -rf "$store/pack"
    mkdir -p "$store/pack"
    tar -C "$store/pack" -xf "$store/pack.tar"
    rm -f "$store/pack.tar" "$store"/parts/*
    echo "$sum" > "$store/extracted"
fi
rm -rf "$store/site" "$store/bin"
mkdir -p "$store/bin"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$store/site" \
    "$store"/pack/whl/*.whl "$store"/pack/weights/*.whl
ff=$(ls "$store"/site/imageio_ffmpeg/binaries/ffmpeg-* | head -1)
chmod +x "$ff"
ln -sf "$(realpath "$ff")" "$store/bin/ffmpeg"
mkdir -p testsets
"$store/bin/ffmpeg" -nostdin -v error -y -i "$store/pack/testsets/$reading.flac" -map_metadata -1 \
    -fflags +bitexact -flags:a +bitexact -c:a pcm_s16le "testsets/$reading.wav"
cp "$store/pack/testsets/$reading.txt" testsets/
echo "$sum" > "$store/ready"
echo "[device_unpack] installed: $(ls "$store"/pack/whl "$store"/pack/weights | grep -c whl) wheels," \
     "ffmpeg $("$store/bin/ffmpeg" -version | head -1 | cut -d' ' -f3), testsets/$reading.wav"
