"""Benchmark the pipeline on one input, optionally against the transformers ASR pipeline.

    python bench.py SOURCE [--model ID_OR_DIR | --synthetic ARCH] [--tokens-per-window N]
                    [--batch-size N] [--runs N] [--baseline] [--overhead]
                    [--json FILE] [--trace FILE] [--plot FILE] [--device DEV] [--dtype T]

SOURCE is a file, an http(s) URL or "-" (standard input, read once into memory).

What it does (issue 4):
- Starts a pipeline, waits for the model (model load time), optionally runs a short warm-up
  job, then runs ``--runs`` timed jobs with ``Job(profile=True)``, each warm, so a job's
  wall time is its own: download + decode + chunk + infer, overlapped.
- Prints audio length, wall time, real-time factor (audio s / wall s), model load time,
  time to the first window's result, and one row per stage (download, decode, chunk,
  infer): items, busy, starved (waiting for input), blocked (waiting for a free slot
  downstream), throughput, and the occupancy of the ring the stage writes (mean, max).
  With ``--runs N`` the minimum and median of the main figures too.
- ``--baseline``: the seed project's method on the same audio, model, device, dtype and
  decoding settings: download the bytes, decode them with ffmpeg, and run transformers'
  ``pipeline("automatic-speech-recognition", chunk_length_s=30, batch_size=B)`` with our
  backend's ``generate_kwargs`` (so ``--tokens-per-window`` binds it too). It runs after
  ours, never at the same time.
- ``--synthetic ARCH``: a random-weight model with the real dimensions of a named Whisper
  architecture (``pipeline.synthetic.ARCHS``), built offline into a temporary directory
  (on CUDA directly on the GPU in float16). ``--show-config`` prints its dimensions only.
- ``--overhead``: runs every timed job a second time with profiling off and reports the
  ratio of median wall times (the cost of recording spans and ring occupancy).

Set HF_HUB_OFFLINE=1 where there is no network: a hub id then fails in seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import logs  # noqa: E402
from pipeline.config import Job, PipelineConfig, env_batch_size, env_model  # noqa: E402
from pipeline.constants import SAMPLE_RATE  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402

log = logging.getLogger("bench")

# Figures summarised over runs (minimum and median) besides the per-stage busy time.
SUMMARY_KEYS = ("wall_s", "rtfx", "first_result_s")
WARMUP_S = 35.0  # two windows: every code path of a job runs once before timing


# ------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    from pipeline.synthetic import ARCHS

    p = argparse.ArgumentParser(
        prog="python bench.py",
        description="Time the pipeline on one input (and the transformers pipeline with --baseline).",
    )
    p.add_argument("source", nargs="?", help="audio file, http(s) URL, or - for standard input")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--model", default=None, help="hub id or checkpoint directory (default: $MODEL_ID)")
    m.add_argument("--synthetic", metavar="ARCH", choices=tuple(ARCHS),
                   help=f"random-weight model of a Whisper architecture: {', '.join(ARCHS)}")
    p.add_argument("--synthetic-dir", default=None, metavar="DIR",
                   help="build (or reuse) the --synthetic checkpoint here instead of a temp dir")
    p.add_argument("--show-config", action="store_true",
                   help="with --synthetic: print the architecture's dimensions and exit")
    p.add_argument("--tokens-per-window", type=int, default=None, metavar="N",
                   help="every window generates exactly N tokens (ours and the baseline)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per batch, ours and the baseline (default: $MODEL_BATCH_SIZE, else 16)")
    p.add_argument("--runs", type=int, default=1, help="timed runs of each (default 1)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the short untimed warm-up job before the timed runs")
    p.add_argument("--baseline", action="store_true",
                   help="also time transformers' ASR pipeline (chunk_length_s=30) on the same input")
    p.add_argument("--overhead", action="store_true",
                   help="also run each job with profiling off and report the profiling overhead")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="model precision (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--language", default=None, help="language code for both (default: detect)")
    p.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    p.add_argument("--overlap", type=float, default=None, help="our window overlap in seconds")
    p.add_argument("--json", dest="json_path", default=None, metavar="FILE", help="write the figures as JSON")
    p.add_argument("--trace", default=None, metavar="FILE", help="write a Chrome trace (Perfetto) of the median run")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG timeline of the median run")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p  # fmt: skip


# ---------------------------------------------------------------------------------- model


def synthetic_description(arch: str) -> dict:
    """The dimensions ``--synthetic ARCH`` builds, from the same config the checkpoint gets
    (``pipeline.synthetic.synthetic_config``); no weights are made."""
    from pipeline.synthetic import synthetic_config

    c = synthetic_config(arch)
    keys = ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins",
            "vocab_size", "max_source_positions", "max_target_positions",
            "decoder_start_token_id", "eos_token_id")  # fmt: skip
    return {"arch": arch, **{k: getattr(c, k) for k in keys}}


def build_synthetic(arch: str, directory: Path, device: str | None) -> Path:
    """Build (or reuse, when ``directory`` already holds this arch) a random-weight
    checkpoint. On CUDA the weights are made on the GPU in float16: seconds, not minutes,
    for large-v3."""
    from pipeline.synthetic import build_checkpoint

    marker = directory / "synthetic.json"
    if marker.is_file() and json.loads(marker.read_text()).get("arch") == arch:
        log.info("reusing synthetic %s checkpoint in %s", arch, directory)
        return directory
    kw = {}
    if _is_cuda(device):
        import torch

        kw = {"device": device or "cuda", "dtype": torch.float16}
    t0 = time.perf_counter()
    build_checkpoint(directory, arch, **kw)
    log.info("built synthetic %s in %.1f s", arch, time.perf_counter() - t0)
    return directory


def _is_cuda(device: str | None) -> bool:
    if device is None:
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def _sync(device: str | None) -> None:
    """Wait for queued GPU work so a timer reads the work's end, not its launch."""
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device if device and device != "cuda" else None)


# ---------------------------------------------------------------------------------- input


def warmup_wav(seconds: float = WARMUP_S) -> bytes:
    """A small WAV (noise) that goes through every stage: the warm-up job's input."""
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).clip(-1, 1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def fetch(source) -> bytes:
    """The input's bytes, as the seed project got them (the whole download, in memory)."""
    if isinstance(source, bytes):
        return source
    if "://" in source:
        with urllib.request.urlopen(source, timeout=60) as r:
            return r.read()
    return Path(source).read_bytes()


# ------------------------------------------------------------------------------------ ours


def run_ours(args, model: str, source, options: DecodeOptions) -> dict:
    """Load the model once, then time ``args.runs`` warm jobs. Returns the profiles, the
    outcome of the median run and, with --overhead, the unprofiled wall times."""
    from pipeline.profile import profile_from_outcome
    from pipeline.runtime import Pipeline

    kw = dict(model=model, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
              log_level=("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)])  # fmt: skip
    if args.overlap is not None:
        kw["overlap_s"] = args.overlap
    cfg = PipelineConfig(**kw)
    t0 = time.monotonic()
    with Pipeline(cfg) as pipe:
        info = pipe.wait_ready()
        ready_s = time.monotonic() - t0
        log.info("model ready: loaded in %.2f s (%.2f s from start)", info["load_s"], ready_s)
        if args.warmup:
            pipe.run_job(Job(warmup_wav(), options, label="warm-up"))
        profiles, outcomes, unprofiled = [], [], []
        for i in range(args.runs):
            # With --overhead each run is a pair, profiling off then on or on then off in
            # turn, so neither side always gets the first (or the second) slot.
            if args.overhead and i % 2 == 0:
                off = pipe.run_job(Job(source, options, label="bench", profile=False))
                unprofiled.append(profile_from_outcome(off)["wall_s"])
            out = pipe.run_job(Job(source, options, label="bench", profile=True))
            if args.overhead and i % 2 == 1:
                off = pipe.run_job(Job(source, options, label="bench", profile=False))
                unprofiled.append(profile_from_outcome(off)["wall_s"])
            p = profile_from_outcome(out)
            log.info("run %d/%d: wall %.2f s", i + 1, args.runs, p["wall_s"])
            profiles.append(p)
            outcomes.append(out)
    median_i = _median_index([p["wall_s"] for p in profiles])
    out = outcomes[median_i]
    tpw = [w.result.n_tokens for w in out.windows]
    return {
        "config": cfg,
        "model_info": info,
        "ready_s": ready_s,
        "profiles": profiles,
        "median": profiles[median_i],
        "outcome": out,
        "tokens_per_window": {"min": min(tpw), "max": max(tpw)} if tpw else None,
        "unprofiled_wall_s": unprofiled,
    }


def _median_index(values) -> int:
    """Index of the (lower) median value: a real run, not an average of two."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


# -------------------------------------------------------------------------------- baseline


def run_baseline(args, model: str, source, options: DecodeOptions, device: str, dtype: str) -> dict:
    """The seed project's method, timed the same way as ours: the whole download, ffmpeg
    decode to 16 kHz float32, then transformers' chunked ASR pipeline (30 s windows with
    its default 5 s strides) with our generate kwargs and timestamps."""
    import torch
    from transformers import pipeline as hf_pipeline
    from transformers.pipelines.audio_utils import ffmpeg_read

    from stages.infer import WhisperBackend

    if args.verbose < 1:
        import warnings

        import transformers

        transformers.utils.logging.set_verbosity_error()
        warnings.simplefilter("ignore")
    t0 = time.monotonic()
    # Same loader (from_pretrained, sdpa attention, dtype, device) as our infer stage, with
    # transformers' own timestamp logits processor: the baseline gets none of our changes.
    backend = WhisperBackend(model, device=device, dtype=dtype, batched_timestamp_rules=False)
    gen = backend.generate_kwargs(options)
    asr = hf_pipeline(
        "automatic-speech-recognition",
        model=backend.model,
        tokenizer=backend.tokenizer,
        feature_extractor=backend.feature_extractor,
        chunk_length_s=30,
        batch_size=args.batch_size,
        device=torch.device(device),  # the model is already there, in our dtype
    )
    load_s = time.monotonic() - t0
    shapes: list[tuple[int, int]] = []
    generate = asr.model.generate

    def counting_generate(*a, **kw):  # windows and tokens the baseline decoded
        out = generate(*a, **kw)
        seqs = out["sequences"] if isinstance(out, dict) else out
        shapes.append((int(seqs.shape[0]), int(seqs.shape[1])))
        return out

    asr.model.generate = counting_generate

    def transcribe(audio):
        return asr(audio, return_timestamps=True, generate_kwargs=dict(gen))

    if args.warmup:
        rng = np.random.default_rng(0)
        transcribe((0.1 * rng.standard_normal(int(WARMUP_S * SAMPLE_RATE))).astype(np.float32))
    runs = []
    for i in range(args.runs):
        shapes.clear()
        _sync(device)
        t_start = time.monotonic()
        data = fetch(source)
        t_dl = time.monotonic()
        audio = ffmpeg_read(data, SAMPLE_RATE)
        t_dec = time.monotonic()
        result = transcribe(audio)
        _sync(device)
        t_end = time.monotonic()
        wall = t_end - t_start
        audio_s = len(audio) / SAMPLE_RATE
        runs.append({
            "wall_s": round(wall, 4),
            "rtfx": round(audio_s / wall, 2) if wall > 0 else None,
            "download_s": round(t_dl - t_start, 4),
            "decode_s": round(t_dec - t_dl, 4),
            "asr_s": round(t_end - t_dec, 4),
            "audio_s": round(audio_s, 3),
            "windows": sum(b for b, _ in shapes),
            "generate_calls": len(shapes),
            "sequence_len_max": max((n for _, n in shapes), default=0),
            "text_chars": len(result.get("text", "")),
        })  # fmt: skip
        log.info("baseline run %d/%d: wall %.2f s", i + 1, args.runs, wall)
    med = runs[_median_index([r["wall_s"] for r in runs])]
    return {
        **med,
        "model_load_s": round(load_s, 3),
        "method": f"transformers pipeline(chunk_length_s=30, batch_size={args.batch_size})",
        "generate_kwargs": {k: v for k, v in gen.items()},
        "runs": runs,
        "summary": _summary(runs, ("wall_s", "rtfx")),
    }


# --------------------------------------------------------------------------------- figures


def _summary(profiles: list[dict], keys=SUMMARY_KEYS) -> dict:
    out = {}
    for k in keys:
        vals = [p[k] for p in profiles if p.get(k) is not None]
        if vals:
            out[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    stages = {}
    for name in profiles[0].get("stages", {}):
        busy = [p["stages"][name]["busy_s"] for p in profiles if name in p["stages"]]
        stages[name] = {"busy_s": {"min": min(busy), "median": statistics.median(busy)}}
    if stages:
        out["stages"] = stages
    return out


def report(ours: dict, baseline: dict | None, args, synthetic: dict | None) -> dict:
    """The JSON document: the median run's profile at the top level, plus everything else."""
    p = dict(ours["median"])
    cfg = ours["config"]
    info = ours["model_info"]
    doc = {
        **p,
        "model": info.get("model"),
        "synthetic": synthetic,
        "device": info.get("device"),
        "dtype": info.get("dtype"),
        "batch_size": cfg.batch_size,
        "overlap_s": cfg.overlap_s,
        "tokens_per_window": args.tokens_per_window,
        "tokens_per_window_seen": ours["tokens_per_window"],
        "ring_slots": {"bytes": cfg.byte_slots, "pcm": cfg.pcm_slots, "window": cfg.window_slots},
        "runs": args.runs,
        "warmup": args.warmup,
        "summary": _summary(ours["profiles"]),
        "run_profiles": ours["profiles"],
        "cold_start": {"model_load_s": round(info["load_s"], 3), "pipeline_ready_s": round(ours["ready_s"], 3)},
        "cpu_count": os.cpu_count(),
    }
    if ours["unprofiled_wall_s"]:
        on = statistics.median(p_["wall_s"] for p_ in ours["profiles"])
        off = statistics.median(ours["unprofiled_wall_s"])
        doc["profiling_overhead"] = {
            "wall_s_profiled": [p_["wall_s"] for p_ in ours["profiles"]],
            "wall_s_unprofiled": ours["unprofiled_wall_s"],
            "median_profiled_s": on,
            "median_unprofiled_s": off,
            "ratio": round(on / off, 4) if off > 0 else None,
        }
    if baseline is not None:
        doc["baseline"] = baseline
        doc["speedup_vs_baseline"] = round(baseline["wall_s"] / p["wall_s"], 3) if p["wall_s"] > 0 else None
    return doc


def format_report(doc: dict) -> str:
    from pipeline.profile import format_profile

    lines = [f"model {doc['model']} on {doc['device']} ({doc['dtype']}), batch {doc['batch_size']}, "
             f"tokens/window {doc['tokens_per_window'] or 'free'}, {doc['runs']} run(s)"
             + (", median run:" if doc["runs"] > 1 else ":")]  # fmt: skip
    lines.append(format_profile(doc).rstrip("\n"))
    if doc["runs"] > 1:
        s = doc["summary"]
        parts = [f"{k} min {v['min']:.2f} median {v['median']:.2f}" for k, v in s.items() if k != "stages"]
        lines.append("over runs: " + "; ".join(parts))
        lines.append("busy s over runs: " + "; ".join(
            f"{n} min {v['busy_s']['min']:.2f} median {v['busy_s']['median']:.2f}"
            for n, v in s.get("stages", {}).items()))  # fmt: skip
    oh = doc.get("profiling_overhead")
    if oh:
        lines.append(f"profiling overhead: median wall {oh['median_profiled_s']:.3f} s on vs "
                     f"{oh['median_unprofiled_s']:.3f} s off (ratio {oh['ratio']:.3f})")  # fmt: skip
    b = doc.get("baseline")
    if b:
        lines.append(
            f"baseline ({b['method']}): wall {b['wall_s']:.2f} s (download {b['download_s']:.2f}, "
            f"decode {b['decode_s']:.2f}, asr {b['asr_s']:.2f}), {b['rtfx']:.1f}x real time, "
            f"{b['windows']} windows, model load {b['model_load_s']:.2f} s"
        )
        if doc["runs"] > 1:
            bs = b["summary"]["wall_s"]
            lines.append(f"baseline wall over runs: min {bs['min']:.2f} median {bs['median']:.2f}")
        sp = doc["speedup_vs_baseline"] or 0.0
        verdict = f"{sp:.2f}x faster" if sp >= 1 else f"{1 / sp:.2f}x SLOWER" if sp > 0 else "?"
        lines.append(f"ours {doc['wall_s']:.2f} s vs baseline {b['wall_s']:.2f} s: ours is {verdict}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)], role="bench")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)  # progress lines on stderr
    if args.show_config:
        if not args.synthetic:
            print("error: --show-config needs --synthetic ARCH", file=sys.stderr)
            return 2
        print(json.dumps(synthetic_description(args.synthetic), indent=1))
        return 0
    if not args.source:
        print("error: SOURCE is required", file=sys.stderr)
        return 2
    if args.runs < 1:
        print("error: --runs must be at least 1", file=sys.stderr)
        return 2
    try:
        args.batch_size = args.batch_size if args.batch_size is not None else env_batch_size()
        options = DecodeOptions(language=args.language, task=args.task,
                                tokens_per_window=args.tokens_per_window)  # fmt: skip
        PipelineConfig(model="x", batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    source = args.source
    if source == "-":
        source = sys.stdin.buffer.read()  # read once: every run (and the baseline) reuses it
    elif "://" not in source and not os.path.isfile(source):
        print(f"error: no such file: {source}", file=sys.stderr)
        return 1

    tmp = None
    synthetic = None
    try:
        if args.synthetic:
            if args.synthetic_dir:
                directory = Path(args.synthetic_dir)
            else:
                tmp = tempfile.mkdtemp(prefix=f"bench-{args.synthetic}-")
                directory = Path(tmp)
            t0 = time.monotonic()
            model = str(build_synthetic(args.synthetic, directory, args.device))
            synthetic = {**synthetic_description(args.synthetic), "build_s": round(time.monotonic() - t0, 2)}
        else:
            model = args.model or env_model()

        ours = run_ours(args, model, source, options)
        baseline = None
        if args.baseline:
            info = ours["model_info"]
            baseline = run_baseline(args, model, source, options, info["device"], info["dtype"])
        doc = report(ours, baseline, args, synthetic)
        sys.stdout.write(format_report(doc))
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        if args.trace:
            from pipeline.trace import write_trace

            write_trace(args.trace, ours["outcome"])
        if args.plot:
            from pipeline.trace import write_plot

            title = (f"{Path(str(doc['model'])).name}: {doc['audio_s']:.0f} s audio, wall "
                     f"{doc['wall_s']:.2f} s ({doc['rtfx']:.0f}x)")  # fmt: skip
            write_plot(args.plot, ours["outcome"], title=title, ring_slots=doc["ring_slots"])
        return 0
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback with -v
        if args.verbose:
            log.exception("bench failed")
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
