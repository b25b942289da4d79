"""Peak memory of a whole run (driver, stages, ffmpeg) against the audio's length.

    python scripts/memory_profile.py --minutes 5 60 [--model DIR | --backend module:Class]

For each length it makes that many minutes of audio (noise, MP3), runs one job through a
fresh pipeline, and samples the proportional set size (PSS: shared pages split between the
processes that map them, so the rings are counted once) of every process of the run every
0.1 s. Memory should not grow with the length of the audio: the rings are fixed-size and
backpressure pauses download and decode when inference is behind (README, "Memory and
the audio's length"). The infer stage's peak in each quarter of a job tells a warm-up
from a leak: after a warm-up its last quarters are alike; a leak climbs to the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import INFER_STARTS, Job, PipelineConfig  # noqa: E402
from pipeline.runtime import Pipeline  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402


def make_audio(path: Path, minutes: float) -> Path:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
         # Pink noise in 2 s bursts with 1 s lulls: the chunker takes steady noise for
         # a pause (no frame louder than its floor) and cut no window from it at all.
         f"anoisesrc=d={minutes * 60}:c=pink:r=44100:a=0.2", "-af", "volume='if(lt(mod(t,3),2),1,0.03)':eval=frame",
         "-ac", "2", "-c:a", "libmp3lame",
         "-b:a", "64k", str(path)],
        check=True,
    )
    return path


def tree_pss(pid: int) -> dict[str, int]:
    """PSS in bytes of ``pid`` and its descendants, by process name (the driver is "driver";
    stages name themselves wsp-source, wsp-decode, ...)."""
    out: dict[str, int] = {}
    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        try:
            name = "driver" if p.pid == pid else p.name()
            out[name] = out.get(name, 0) + p.memory_full_info().pss
        except psutil.Error:
            pass
    return out


def by_quarter(series: list[tuple[float, int]], t0: float, t1: float) -> list[float | None]:
    """The peak of ``series`` ((time, bytes) samples) in each quarter of [t0, t1], in MiB;
    None for a quarter without a sample. A stage whose memory levels off has its last two
    quarters alike; one that leaks keeps climbing to the last."""
    span = max(t1 - t0, 1e-9)
    peaks: list[int | None] = [None] * 4
    for t, v in series:
        q = min(3, max(0, int((t - t0) / span * 4)))
        peaks[q] = v if peaks[q] is None else max(peaks[q], v)
    return [None if v is None else round(v / 2**20, 1) for v in peaks]


def measure(audio: Path, cfg: PipelineConfig, options: DecodeOptions) -> dict:
    peak = {"pss": 0}
    per_process: dict[str, int] = {}
    infer: list[tuple[float, int]] = []  # (time, the infer stage's PSS) through the job
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            sample = tree_pss(os.getpid())
            peak["pss"] = max(peak["pss"], sum(sample.values()))
            for name, v in sample.items():
                per_process[name] = max(per_process.get(name, 0), v)
            if "wsp-infer" in sample:
                infer.append((time.monotonic(), sample["wsp-infer"]))
            time.sleep(0.1)

    t = threading.Thread(target=sampler, daemon=True)
    t0 = time.monotonic()
    with Pipeline(cfg) as p:
        p.wait_ready(timeout=300)
        t_job = time.monotonic()
        t.start()
        out = p.run_job(Job(str(audio), options))
        t_done = time.monotonic()
    stop.set()
    t.join()
    return {
        "audio_s": out.transcript.duration,
        "wall_s": round(time.monotonic() - t0, 2),
        "windows": len(out.windows),
        "peak_pss_mib": round(peak["pss"] / 2**20, 1),
        "peak_by_process_mib": {k: round(v / 2**20, 1) for k, v in sorted(per_process.items())},
        "infer_peak_by_quarter_mib": by_quarter(infer, t_job, t_done),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 60])
    ap.add_argument("--model", default=None, help="checkpoint dir (default: a tiny random one)")
    ap.add_argument("--backend", default="whisper")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens-per-window", type=int, default=8)
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--infer-start", default="forkserver", choices=INFER_STARTS,
                    help="how every length's infer stage starts (default: forked from the fork server)")  # fmt: skip
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None and args.backend == "whisper":
            from pipeline.synthetic import build_checkpoint

            model = str(build_checkpoint(Path(tmp) / "tiny", "test"))
        # Every length's infer stage starts alike (by default forked from the fork server,
        # counted in the tree: it is this process's child), so the lengths compare.
        cfg = PipelineConfig(model=model or "tone", backend=args.backend, batch_size=args.batch_size,
                             infer_start=args.infer_start)  # fmt: skip
        opts = DecodeOptions(tokens_per_window=args.tokens_per_window if args.backend == "whisper" else None)
        for m in args.minutes:
            audio = make_audio(Path(tmp) / f"{m}min.mp3", m)
            row = {"minutes": m, **measure(audio, cfg, opts)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]["peak_pss_mib"]
    for r in rows[1:]:
        print(f"{r['minutes']:g} min vs {rows[0]['minutes']:g} min: peak {r['peak_pss_mib']} MiB vs "
              f"{base} MiB ({r['peak_pss_mib'] - base:+.1f} MiB)")
    for r in rows:
        quarters = ", ".join("-" if v is None else f"{v}" for v in r["infer_peak_by_quarter_mib"])
        print(f"{r['minutes']:g} min: infer stage's peak in each quarter of the job: {quarters} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
