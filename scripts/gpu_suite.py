"""The GPU benchmark suite in one command (issue 9): ``scripts/gpu_suite.sh`` runs this.

    python scripts/gpu_suite.py [--dry-run] [--out DIR] [--minutes M]

On a CUDA machine (about 6-8 minutes on one H200):

1. 90 minutes of speech-like audio (noise bursts with pauses, seeded: the chunker cuts it
   like speech) as a 16 kHz WAV;
2. ``bench.py`` on it with random-weight ``large-v3-turbo`` and ``large-v3`` (the real
   dimensions; every window decodes exactly 120 tokens, about what 30 s of speech takes),
   float16, batch 256, each with ``--baseline``: transformers' ASR pipeline at the seed
   project's settings (batch 256, float16) on the same audio in the same run;
3. real tiny.en on a long reading (``testsets/espeak_us.wav`` from
   ``scripts/make_testsets.py``) against the chunked pipeline and sequential decoding,
   with WER, where the weights and the reading are on the machine (else skipped, saying
   why: the GPU machine may have no espeak-ng and no pip index);
4. how many of that reading's windows the slot engine decodes to other text than
   per-batch ``generate`` in float16 (``scripts/engine_equality.py``: in flight, static
   as CUDA runs it, and all admitted at once; and ``generate`` on each window alone, how
   far the reference's own tokens move with its batch), where the same holds;
5. into ``--out`` (default ``$OUT``, else ``benchmarks/gpu/<date>``): each bench's JSON
   and timeline PNG, ``traces.tar.gz`` (each Chrome trace and log) and ``summary.json``
   with the headline figures: at most 8 files, what a lent GPU machine sends back.

Each step gets at most what is left of ``--budget-s`` (540 s: a lent machine's call ends
at 600) and ``summary.json`` is rewritten after each, so a call cut short still sends back
what was done. On a lent machine with no package index, ``scripts/device_pack.sh`` packs
what the suite needs (pinned transformers, ffmpeg, the tiny.en weights, the reading) in
parts sent one per call; ``gpu_suite.sh`` installs them (``scripts/device_unpack.sh``).

``--dry-run`` runs the same steps on the CPU with small sizes (the tests' tiny
architecture, 3 minutes of audio, 8 tokens per window, batch 4) in well under 3 minutes:
CI runs it (tests/test_gpu_suite.py), so the suite cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts of syllable length with word and sentence pauses, seeded: level changes
    like speech, so windows are cut at pauses as they would be on a reading. Random weights
    decode a forced number of tokens whatever the audio is; only its shape matters here."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, dtype=np.float32)
    pos = 0
    while pos < n:
        talk = int(rng.uniform(2.0, 9.0) * SAMPLE_RATE)  # a phrase
        syll = int(0.15 * SAMPLE_RATE)
        seg = rng.standard_normal(min(talk, n - pos)).astype(np.float32)
        env = 0.05 + 0.1 * ((np.arange(len(seg)) // syll) % 2)
        out[pos : pos + len(seg)] = 0.3 * env * seg
        pos += len(seg) + int(rng.uniform(0.3, 1.2) * SAMPLE_RATE)  # a pause
    return out


def write_wav(path: Path, x: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def bench(out: Path, scratch: Path, name: str, source: Path, *args: str, timeout: float) -> dict:
    """One ``bench.py`` run: its JSON and plot land in ``out`` as ``name.json`` and
    ``name.png``, its trace and log in ``scratch`` (packed into one archive at the end: a
    lent GPU machine sends back at most 8 files)."""
    cmd = [
        sys.executable, str(REPO / "bench.py"), str(source), *args,
        "--json", str(out / f"{name}.json"), "--trace", str(scratch / f"{name}.trace.json"),
        "--plot", str(out / f"{name}.png"),
    ]  # fmt: skip
    print(f"[gpu_suite] {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    # The repo first, then what was there (a lent machine's packed site, scripts/device_pack.sh).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    r = subprocess.run(cmd, cwd=REPO, env=env, timeout=timeout, capture_output=True, text=True)
    (scratch / f"{name}.log").write_text(r.stdout + r.stderr)
    print(r.stdout, flush=True)
    if r.returncode != 0:
        print(r.stderr[-4000:], file=sys.stderr, flush=True)
        return {"name": name, "error": f"bench.py exited {r.returncode}", "wall_s": time.monotonic() - t0}
    doc = json.loads((out / f"{name}.json").read_text())
    base = doc.get("baseline") or {}
    row = {
        "name": name,
        "audio_s": doc.get("audio_s"),
        "wall_s": doc.get("wall_s"),
        "rtfx": doc.get("rtfx"),
        "baseline_wall_s": base.get("wall_s"),
        "speedup_vs_baseline": doc.get("speedup_vs_baseline"),
        "decode": doc.get("decode"),
    }
    if doc.get("accuracy"):
        row["wer"] = {k: v.get("wer") for k, v in doc["accuracy"].items()}
    return row


def equality(reading: Path, device: str, dry: bool, timeout: float) -> dict:
    """scripts/engine_equality.py on the reading: windows whose text differs from
    generate's, per engine mode (float16 on the GPU; float32 in the dry run, where it
    must be 0)."""
    dtype = "float32" if dry else "float16"
    cmd = [sys.executable, str(REPO / "scripts" / "engine_equality.py"), str(reading), "--model", "tiny.en",
           "--language", "en", "--device", device, "--dtype", dtype, "--quiet",
           "--slots", "4" if dry else "8",
           # On the GPU also "alone": generate's own tokens with each window in a batch of
           # its own, the yardstick (cuBLAS picks kernels by shape, so in float16 even
           # generate may change with what shares its batch; on the CPU it did not).
           "--modes", "dynamic,static,together" if dry else "alone,dynamic,static,together"]  # fmt: skip
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"name": "token_equality", "error": "timed out"}
    lines = [ln for ln in done.stdout.splitlines() if "differ" in ln or "windows;" in ln]
    entry = {"name": "token_equality", "dtype": dtype, "wall_s": round(time.monotonic() - t0, 1), "lines": lines}
    if done.returncode != 0:
        entry["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_suite.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, small sizes: checks the suite itself")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else benchmarks/gpu/DATE)")
    p.add_argument("--minutes", type=float, default=None, help="audio length (default 90; dry run 1)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="wall seconds for the whole suite (a lent machine's call ends at 600): a step "
                        "is given what is left at most, and skipped when under 30 s is (default 540)")
    args = p.parse_args(argv)

    import torch

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("error: no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "gpu" / stamp)
    out.mkdir(parents=True, exist_ok=True)
    minutes = args.minutes or (1.0 if dry else 90.0)
    scratch = Path(tempfile.mkdtemp(prefix="gpu-suite-"))  # audio, traces, logs
    audio = write_wav(scratch / f"speech_{minutes:g}min.wav", speechlike(minutes * 60))
    device = "cpu" if dry else "cuda"
    import transformers

    deadline = time.monotonic() + args.budget_s
    summary = {
        "date": stamp,
        "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "audio_minutes": minutes,
        "runs": [],
    }
    def step(name: str, want_s: float, fn) -> None:
        """Run one step with at most what is left of the budget; the summary is written
        after each, so a call cut short still sends back what was done."""
        left = deadline - time.monotonic() - 10
        if left < 30:
            summary["runs"].append({"name": name, "skipped": f"out of time ({args.budget_s:g} s budget)"})
        else:
            try:
                summary["runs"].append(fn(min(want_s, left)))
            except subprocess.TimeoutExpired:
                summary["runs"].append({"name": name, "error": f"timed out after {min(want_s, left):.0f} s"})
        (out / "summary.json").write_text(json.dumps(summary, indent=1))

    if dry:
        plans = [("synthetic_test", ["--synthetic", "test", "--tokens-per-window", "8", "--batch-size", "4"])]
    else:
        plans = [
            ("turbo", ["--synthetic", "large-v3-turbo", "--tokens-per-window", "120", "--batch-size", "256"]),
            ("large_v3", ["--synthetic", "large-v3", "--tokens-per-window", "120", "--batch-size", "256"]),
        ]
    common = ["--device", device, "--baseline", *(["--no-warmup"] if dry else ["--dtype", "float16"])]
    for name, extra in plans:
        step(name, 150 if dry else 280,
             lambda t, name=name, extra=extra: bench(out, scratch, name, audio, *extra, *common, timeout=t))

    # Real weights on a long reading, where both are on this machine.
    reading = REPO / "testsets" / ("espeak_short.wav" if dry else "espeak_us.wav")
    try:
        sys.path.insert(0, str(REPO))
        from pipeline.weights import resolve_model

        resolve_model("tiny.en")
        have_weights = True
    except Exception as exc:  # noqa: BLE001 - any reason: skipped, and said why
        have_weights, why = False, f"tiny.en weights not installed: {exc}"
    if not reading.is_file():
        summary["runs"].append({"name": "tiny_en_reading", "skipped": f"{reading} missing (scripts/make_testsets.py)"})
    elif not have_weights:
        summary["runs"].append({"name": "tiny_en_reading", "skipped": why})
    else:
        step("tiny_en_reading", 240 if dry else 200, lambda t: bench(
            out, scratch, "tiny_en_reading", reading, "--model", "tiny.en", "--language", "en",
            "--batch-size", "8" if dry else "64", "--device", device, "--no-warmup",
            "--reference", str(reading.with_suffix(".txt")),
            "--baselines", "chunked" if dry else "chunked,sequential",
            timeout=t,
        ))  # fmt: skip
        # How often half precision makes the engine's tokens differ from generate's
        # (README, "Half precision"): float16 static (CUDA's mode) and all-at-once.
        step("token_equality", 200 if dry else 150, lambda t: equality(reading, device, dry, t))
    with tarfile.open(out / "traces.tar.gz", "w:gz") as tar:
        for f in sorted(scratch.glob("*.trace.json")) + sorted(scratch.glob("*.log")):
            tar.add(f, arcname=f.name)
    shutil.rmtree(scratch, ignore_errors=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    failed = [r["name"] for r in summary["runs"] if "error" in r]
    if failed:
        print(f"error: gpu suite: {', '.join(failed)} failed (logs in {out})", file=sys.stderr)
        return 1
    print(f"[gpu_suite] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
