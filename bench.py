"""Benchmark the pipeline on one input, optionally against the transformers ASR pipeline.

    python bench.py SOURCE [--model SPEC | --synthetic ARCH] [--tokens-per-window N]
                    [--batch-size N] [--runs N] [--baseline] [--overhead]
                    [--reference TEXT_FILE] [--baselines generate,plain,chunked,sequential,faster-whisper]
                    [--engine slots|generate]
                    [--faster-whisper-model CT2_DIR]
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
- ``--interleave`` (with ``--runs N`` and baselines): round by round instead, one run of
  each decoder per round (the order reversed every other round), every decoder loaded at
  once but only one running; each round's wall-time ratio and their median are reported
  ("ratio_by_round" in ``--json``). On a shared machine whose speed drifts during a bench
  this is the ratio to quote.
- ``--synthetic ARCH``: a random-weight model with the real dimensions of a named Whisper
  architecture (``pipeline.synthetic.ARCHS``), built offline into a temporary directory
  (on CUDA directly on the GPU in float16). ``--show-config`` prints its dimensions only.
- ``--overhead``: runs every timed job a second time with profiling off and reports the
  ratio of median wall times (the cost of recording spans and ring occupancy).
- ``--model SPEC`` goes through ``pipeline.weights.resolve_model`` when that module exists
  (a CTranslate2 Whisper directory or a short name such as ``tiny.en`` becomes a
  transformers checkpoint directory); otherwise SPEC is used as it is.

Accuracy (issue 8):
- ``--reference FILE`` (plain text): scores our transcript (the median run's) with
  ``pipeline.accuracy.score``: WER after transformers' English normaliser, substitutions /
  deletions / insertions, the longest run of reference words lost, the longest
  back-to-back repeat. Printed as a table; in ``--json`` under "accuracy" (one dict per
  decoder) and "reference".
- Baseline decoders, each run after ours (never at the same time), with the same weights,
  device and dtype, greedy (num_beams=1, no sampling, no temperature fallback), timed the
  same way (whole download + ffmpeg decode + decoding), and scored the same way:
  ``generate``: this pipeline with the other decoder (``--engine generate``: one
  transformers ``generate`` call per batch, as before the slot engine), timed like ours,
  with its slot utilisation beside ours (issue 9);
  ``plain``: this pipeline with its accuracy machinery off (``--plain``: one greedy decode
  per window, kept as decoded), timed like ours (pipeline jobs): what the machinery costs;
  ``chunked``: transformers' chunked ASR pipeline (the seed's method, above);
  ``sequential``: transformers' long-form ``generate`` over the whole audio's features
  (OpenAI's seek algorithm; batch of one; condition_on_prev_tokens=False);
  ``faster-whisper``: ``WhisperModel`` on the CTranslate2 directory (beam_size=1,
  temperature 0 only, condition_on_previous_text=False, vad_filter=False), run when
  faster_whisper imports and a CTranslate2 directory is known (``--faster-whisper-model``,
  a CTranslate2 ``--model`` directory, or what ``pipeline.weights`` says a short name came
  from); otherwise it is skipped with the reason.
  ``--baselines LIST`` picks them (and implies ``--baseline``); ``--baseline`` alone runs
  ``chunked``, plus ``sequential`` when ``--reference`` is given. Timing details of every
  baseline go in ``--json`` under "baselines"; "baseline" stays the chunked pipeline's.

The baselines other than ``generate`` and ``plain`` live in ``pipeline/baselines.py``.

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
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import logs  # noqa: E402
from pipeline.baselines import (  # noqa: E402
    WARMUP_S,
    SharedBackend,
    bursts,
    chunked_rounds,
    faster_whisper_rounds,
    faster_whisper_unavailable,
    is_cuda,
    median_index,
    sequential_rounds,
    summarise,
)
from pipeline.config import Job, PipelineConfig, env_batch_size, env_model  # noqa: E402
from pipeline.constants import SAMPLE_RATE  # noqa: E402
from pipeline.types import DecodeOptions  # noqa: E402
from stages.quality import QualityConfig  # noqa: E402

log = logging.getLogger("bench")

BASELINES = ("generate", "plain", "chunked", "sequential", "faster-whisper")  # --baselines, in the order they run


# ------------------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    from pipeline.synthetic import ARCHS

    p = argparse.ArgumentParser(
        prog="python bench.py",
        description="Time the pipeline on one input (and the transformers pipeline with --baseline).",
    )
    p.add_argument("source", nargs="?", help="audio file, http(s) URL, or - for standard input")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--model", default=None,
                   help="hub id, checkpoint directory, CTranslate2 Whisper directory or short name "
                        "such as tiny.en (default: $MODEL_ID)")
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
    p.add_argument("--interleave", action="store_true",
                   help="with baselines: run round by round, one run of each decoder per round (order "
                        "reversed every other round), all loaded at once, and report each round's "
                        "ratio; default: ours first, then each baseline in turn")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the short untimed warm-up job before the timed runs")
    p.add_argument("--baseline", action="store_true",
                   help="also time transformers' ASR pipeline (chunk_length_s=30) on the same input")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help=f"comma-separated baseline decoders to run after ours: {','.join(BASELINES)} "
                        "(implies --baseline; default with --baseline: chunked, plus sequential "
                        "with --reference)")
    p.add_argument("--reference", default=None, metavar="FILE",
                   help="plain-text reference transcript: score WER etc. of ours and every baseline")
    p.add_argument("--faster-whisper-model", default=None, metavar="CT2_DIR",
                   help="CTranslate2 Whisper directory for the faster-whisper baseline "
                        "(default: --model when it is one, or its source per pipeline.weights)")
    p.add_argument("--overhead", action="store_true",
                   help="also run each job with profiling off and report the profiling overhead")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="model precision (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--language", default=None, help="language code for both (default: detect)")
    p.add_argument("--task", default="transcribe", choices=("transcribe", "translate"))
    p.add_argument("--engine", default="slots", choices=("slots", "generate"),
                   help="our decoder: the slot engine (default) or one transformers generate call "
                        "per batch (kept to compare against; the 'generate' baseline runs it too)")
    p.add_argument("--plain", action="store_true",
                   help="our pipeline with its accuracy machinery off (one greedy decode per window, "
                        "kept as decoded): what the machinery is measured against")
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
    if is_cuda(device):
        import torch

        kw = {"device": device or "cuda", "dtype": torch.float16}
    t0 = time.perf_counter()
    build_checkpoint(directory, arch, **kw)
    log.info("built synthetic %s in %.1f s", arch, time.perf_counter() - t0)
    return directory


def _weights_module():
    """``pipeline.weights`` when it exists (imported lazily: it may import torch), else None.
    An import error inside an existing module is raised, not hidden."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("pipeline.weights") is None:
        return None
    return importlib.import_module("pipeline.weights")


def resolve_model_spec(spec: str) -> str:
    """``--model`` as a transformers checkpoint (directory or hub id): through
    ``pipeline.weights.resolve_model`` when that module exists, else ``spec`` unchanged."""
    weights = _weights_module()
    if weights is None or not hasattr(weights, "resolve_model"):
        return spec
    return str(weights.resolve_model(spec))


def is_ct2_dir(path) -> bool:
    """A CTranslate2 model directory: ``model.bin`` and a ``config.json`` that names no
    transformers ``model_type``."""
    p = Path(str(path))
    if not ((p / "model.bin").is_file() and (p / "config.json").is_file()):
        return False
    try:
        return "model_type" not in json.loads((p / "config.json").read_text())
    except (OSError, ValueError):
        return False


def ct2_source(args, spec: str | None) -> tuple[str | None, str]:
    """(CTranslate2 directory for faster-whisper, or None; how it was found or why not)."""
    if args.faster_whisper_model:
        if not is_ct2_dir(args.faster_whisper_model):
            return None, f"--faster-whisper-model {args.faster_whisper_model} is not a CTranslate2 directory"
        return args.faster_whisper_model, "--faster-whisper-model"
    if spec is None:
        return None, "no --model (pass --faster-whisper-model CT2_DIR)"
    if is_ct2_dir(spec):
        return spec, "--model is a CTranslate2 directory"
    weights = _weights_module()
    packaged = getattr(weights, "PACKAGED", {}) if weights is not None else {}
    if spec in packaged and hasattr(weights, "packaged_ct2_dir"):
        try:  # the pip-installed CTranslate2 folder the short name is converted from
            found = weights.packaged_ct2_dir(spec)
        except Exception as exc:  # noqa: BLE001 - a note in the table, not a failure
            return None, f"pipeline.weights.packaged_ct2_dir({spec!r}) failed: {exc}"
        if is_ct2_dir(found):
            return str(found), "pipeline.weights.packaged_ct2_dir"
    return None, f"no CTranslate2 directory known for {spec!r} (pass --faster-whisper-model CT2_DIR)"


# ---------------------------------------------------------------------------------- input


def warmup_wav(seconds: float = WARMUP_S) -> bytes:
    """A small WAV that goes through every stage: the warm-up job's input. Noise in
    syllable-like bursts: steady noise would be no window at all (the chunker skips audio
    that never rises above its floor), and the model would never run."""
    x = bursts(seconds).clip(-1, 1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


# ------------------------------------------------------------------------------------ ours


def ours_rounds(args, model: str, source, options: DecodeOptions, ready: dict | None = None):
    """Our pipeline, one timed run per step: a generator that loads the model and runs the
    warm-up on its first step too, yields once after each of ``args.runs`` warm jobs and
    returns (``StopIteration.value``) the profiles, the outcome of the median run and,
    with --overhead, the unprofiled wall times. Its pipeline stays up between steps, so
    that other decoders' runs can be interleaved with ours (``--interleave``). ``ready``,
    when given, is updated with the model's info (device, dtype, ...) once it is loaded."""
    from pipeline.profile import profile_from_outcome
    from pipeline.runtime import Pipeline

    kw = dict(model=model, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
              engine=getattr(args, "engine", "slots"), log_level=("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)])  # fmt: skip
    if args.plain:
        kw["quality"] = QualityConfig(enabled=False)
    cfg = PipelineConfig(**kw)
    who = "ours" + (" --plain" if args.plain else "") + (f" --engine {cfg.engine}" if cfg.engine != "slots" else "")
    t0 = time.monotonic()
    with Pipeline(cfg) as pipe:
        info = pipe.wait_ready()
        ready_s = time.monotonic() - t0
        log.info("model ready: loaded in %.2f s (%.2f s from start)", info["load_s"], ready_s)
        if ready is not None:
            ready.update(info)
        if args.warmup:
            pipe.run_job(Job(warmup_wav(), options, label="warm-up"))
        profiles, outcomes, unprofiled = [], [], []
        for i in range(args.runs):
            # With --overhead each run is a pair, profiling off then on or on then off in
            # turn, so neither side always gets the first (or the second) slot.
            if args.overhead and i % 2 == 0:
                off = pipe.run_job(Job(source, options, label=args.label, profile=False))
                unprofiled.append(profile_from_outcome(off)["wall_s"])
            out = pipe.run_job(Job(source, options, label=args.label, profile=True))
            if args.overhead and i % 2 == 1:
                off = pipe.run_job(Job(source, options, label=args.label, profile=False))
                unprofiled.append(profile_from_outcome(off)["wall_s"])
            p = profile_from_outcome(out)
            log.info("%s run %d/%d: wall %.2f s", who, i + 1, args.runs, p["wall_s"])
            profiles.append(p)
            outcomes.append(out)
            yield
    median_i = median_index([p["wall_s"] for p in profiles])
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


def _drain(rounds):
    """Step a rounds generator to its end; its return value."""
    while True:
        try:
            next(rounds)
        except StopIteration as stop:
            return stop.value


# -------------------------------------------------------------------------------- baseline
# The transformers and faster-whisper baselines are in pipeline/baselines.py; the two
# below are this pipeline itself with one setting changed, so they run through ours_rounds.


def plain_rounds(args, model: str, source, options: DecodeOptions):
    """This pipeline with its accuracy machinery off (``--plain``: each window decoded once,
    greedy, kept as decoded; same windows, batches and model), timed exactly like ours:
    what the machinery costs and what it buys, in one run. A rounds generator."""
    import types

    plain = yield from ours_rounds(types.SimpleNamespace(**{**vars(args), "plain": True, "overhead": False}),
                                   model, source, options)  # fmt: skip
    runs = [{"wall_s": p["wall_s"], "rtfx": p["rtfx"]} for p in plain["profiles"]]
    med = plain["median"]
    return {
        "wall_s": med["wall_s"],
        "rtfx": med["rtfx"],
        "model_load_s": round(plain["model_info"]["load_s"], 3),
        "method": "this pipeline, --plain (accuracy machinery off)",
        "text": plain["outcome"].transcript.text,
        "runs": runs,
        "summary": summarise(runs, ("wall_s", "rtfx")),
    }


def generate_rounds(args, model: str, source, options: DecodeOptions):
    """This pipeline decoding with one transformers ``generate`` call per batch instead of
    the slot engine (``--engine generate``; same windows, review and model), timed exactly
    like ours: the engine's gain, and each decoder's slot utilisation, in one run. A
    rounds generator."""
    import types

    other = "generate" if getattr(args, "engine", "slots") == "slots" else "slots"
    gen = yield from ours_rounds(types.SimpleNamespace(**{**vars(args), "engine": other, "overhead": False}),
                                 model, source, options)  # fmt: skip
    runs = [{"wall_s": p["wall_s"], "rtfx": p["rtfx"]} for p in gen["profiles"]]
    med = gen["median"]
    return {
        "wall_s": med["wall_s"],
        "rtfx": med["rtfx"],
        "model_load_s": round(gen["model_info"]["load_s"], 3),
        "method": f"this pipeline, --engine {other}",
        "decode": med.get("decode"),
        "text": gen["outcome"].transcript.text,
        "runs": runs,
        "summary": summarise(runs, ("wall_s", "rtfx")),
    }


def baseline_starts(args, names: list[str], model: str, spec: str | None, source, options, where) -> list:
    """(name, start) per selected baseline, in order: ``start()`` gives its rounds generator
    (see ``ours_rounds``), whose result is the baseline's dict, or {"skipped": reason}.
    ``where()``: (device, dtype) as ours resolved them. The chunked and sequential ones
    share one model load."""
    shared = SharedBackend(model, where)

    def start(name):
        device, dtype = where()
        if name == "plain":
            return plain_rounds(args, model, source, options)
        if name == "generate":
            return generate_rounds(args, model, source, options)
        if name == "chunked":
            return chunked_rounds(args, shared, source, options, device)
        if name == "sequential":
            return sequential_rounds(args, shared, source, options, device)
        # faster-whisper: run one after the other, the transformers model is freed first
        # (large models on a GPU); interleaved, nothing of it is loaded yet or it is in use.
        if not args.interleave:
            shared.drop()
        ct2_dir, why = ct2_source(args, spec)
        reason = faster_whisper_unavailable(ct2_dir, why)
        if reason:
            log.warning("faster-whisper baseline skipped: %s", reason)
            return _finished({"skipped": reason})
        return faster_whisper_rounds(args, ct2_dir, source, options, device, dtype)

    return [(name, lambda name=name: start(name)) for name in names]


def _finished(result: dict):
    """A rounds generator with no runs: it returns ``result`` on its first step."""
    return result
    yield  # unreachable: it makes this function a generator


def run_rounds(starts: list, runs: int, interleave: bool) -> dict:
    """name -> result of each decoder's rounds generator (``starts``: (name, start) pairs).

    One after the other: each decoder's runs back to back, the next decoder started after
    the last one ended. ``interleave``: round by round, one run of each decoder per round,
    in the given order in even rounds and the reverse in odd ones, so that a machine that
    speeds up or slows down during the bench (shared machines do, by tens of percent)
    reaches every decoder alike and no decoder always runs first; each decoder is started
    at its first step and stays loaded until the rounds end. Whatever happens, every
    generator still open is closed (pipelines shut down) before this returns or raises."""
    results: dict[str, dict] = {}
    if not interleave:
        for name, start in starts:
            results[name] = _drain(start())
        return results
    live: dict[str, object] = {name: None for name, _ in starts}
    begin = dict(starts)
    try:
        for r in range(runs + 1):  # the step after the last run returns the result
            for name in list(live) if r % 2 == 0 else list(live)[::-1]:
                if live[name] is None:
                    live[name] = begin[name]()
                try:
                    next(live[name])
                except StopIteration as stop:
                    results[name] = stop.value
                    del live[name]
        if live:
            raise RuntimeError(f"decoders ran more than {runs} run(s): {', '.join(live)}")
    finally:
        for gen in live.values():
            if gen is not None:
                gen.close()
    return {name: results[name] for name, _ in starts}


def selected_baselines(args) -> list[str]:
    """The baseline decoders to run, in BASELINES order. Raises ValueError for unknown names."""
    if args.baselines is not None:
        names = [n.strip() for n in args.baselines.split(",") if n.strip()]
        unknown = [n for n in names if n not in BASELINES]
        if unknown or not names:
            raise ValueError(f"--baselines takes a comma-separated subset of {','.join(BASELINES)}, "
                             f"not {args.baselines!r}")  # fmt: skip
        return [n for n in BASELINES if n in names]
    if args.baseline:
        return ["chunked", "sequential"] if args.reference else ["chunked"]
    return []


# -------------------------------------------------------------------------------- accuracy


def accuracy_rows(ours: dict, baselines: dict, reference: str | None) -> dict:
    """decoder -> {method, wall_s, rtfx, ratio_vs_ours, [score fields], text}, ours first;
    a skipped baseline is {"skipped": reason}. ``ratio_vs_ours`` is the decoder's wall time
    over ours (above 1: ours is faster). Score fields (``pipeline.accuracy.Score``) only
    with a reference."""
    from pipeline.accuracy import score

    p = ours["median"]
    our_wall = p["wall_s"]
    entries = {"ours": {"method": "this pipeline", "wall_s": p["wall_s"], "rtfx": p["rtfx"],
                        "text": ours["outcome"].transcript.text}}  # fmt: skip
    for name, b in baselines.items():
        if "skipped" in b:
            entries[name] = {"skipped": b["skipped"]}
        else:
            entries[name] = {"method": b["method"], "wall_s": b["wall_s"], "rtfx": b["rtfx"], "text": b["text"]}
    for e in entries.values():
        if "skipped" in e:
            continue
        e["ratio_vs_ours"] = round(e["wall_s"] / our_wall, 3) if our_wall > 0 else None
        if reference is not None:
            e.update(score(reference, e["text"]).to_dict())
        e["text"] = e.pop("text")  # last: the long field
    return entries


def format_accuracy(rows: dict, reference: dict | None) -> str:
    """The decoders side by side, as a Markdown table:

    | decoder | WER | sub/del/ins | longest lost run | longest repeat | wall s | rtfx | ratio vs ours |
    """
    head = ("decoder", "WER", "sub/del/ins", "longest lost run", "longest repeat", "wall s", "rtfx", "ratio vs ours")
    table, notes = [], []
    for name, e in rows.items():
        if "skipped" in e:
            table.append((name,) + ("-",) * (len(head) - 1))
            notes.append(f"{name} skipped: {e['skipped']}")
            continue
        scored = "wer" in e
        table.append((
            name,
            f"{100 * e['wer']:.1f}%" if scored else "-",
            f"{e['substitutions']}/{e['deletions']}/{e['insertions']}" if scored else "-",
            str(e["longest_lost_run"]) if scored else "-",
            str(e["longest_repeat"]) if scored else "-",
            f"{e['wall_s']:.2f}",
            f"{e['rtfx']:.1f}" if e["rtfx"] is not None else "-",
            f"{e['ratio_vs_ours']:.2f}" if e["ratio_vs_ours"] is not None else "-",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in (head, *table)) for i in range(len(head))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    if reference:
        title = (f"accuracy against {reference['path']} ({reference['words']} words after normalising; "
                 "greedy, same weights):")  # fmt: skip
    else:
        title = "decoders (no --reference: timings only; greedy, same weights):"
    out = [title, line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in table]
    out.append("ratio vs ours: the decoder's wall time / ours (above 1: ours is faster); "
               "wall times include download and decode")  # fmt: skip
    out += notes
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------- figures


def report(ours: dict, baselines: dict | None, args, synthetic: dict | None, reference: dict | None = None) -> dict:
    """The JSON document: the median run's profile at the top level, plus everything else.
    ``baselines``: name -> result (``run_baselines``); ``reference``: {"path", "text"}."""
    p = dict(ours["median"])
    cfg = ours["config"]
    info = ours["model_info"]
    baselines = baselines or {}
    baseline = baselines.get("chunked")
    doc = {
        **p,
        "model": info.get("model"),
        "model_spec": getattr(args, "model_spec", None),
        "synthetic": synthetic,
        "device": info.get("device"),
        "dtype": info.get("dtype"),
        "batch_size": cfg.batch_size,
        "engine": cfg.engine,
        "quality": cfg.quality.enabled,
        "tokens_per_window": args.tokens_per_window,
        "tokens_per_window_seen": ours["tokens_per_window"],
        "ring_slots": {"bytes": cfg.byte_slots, "pcm": cfg.pcm_slots, "window": cfg.window_slots},
        "runs": args.runs,
        "interleave": bool(getattr(args, "interleave", False)),
        "warmup": args.warmup,
        "summary": summarise(ours["profiles"]),
        "run_profiles": ours["profiles"],
        "cold_start": {"model_load_s": round(info["load_s"], 3), "pipeline_ready_s": round(ours["ready_s"], 3)},
        "cpu_count": os.cpu_count(),
        "load_average_at_start": getattr(args, "load_at_start", None),
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
        doc["baseline"] = {k: v for k, v in baseline.items() if k != "text"}
        doc["speedup_vs_baseline"] = round(baseline["wall_s"] / p["wall_s"], 3) if p["wall_s"] > 0 else None
    if baselines:
        doc["baselines"] = {n: {k: v for k, v in b.items() if k != "text"} for n, b in baselines.items()}
        if doc["interleave"]:
            doc["ratio_by_round"] = ratio_by_round(ours, baselines)
    if reference is not None or set(baselines) - {"chunked"}:
        rows = accuracy_rows(ours, baselines, reference["text"] if reference else None)
        if reference is not None:
            from pipeline.accuracy import default_normalizer, normalize

            doc["reference"] = {
                "path": reference["path"],
                "words": len(normalize(reference["text"]).split()),
                "normalizer": "transformers EnglishTextNormalizer, spelling map entries: "
                f"{default_normalizer().spelling_entries}",
            }
            doc["accuracy"] = rows
        else:  # timings side by side only; no texts kept without a reference to judge them
            doc["decoders"] = {n: {k: v for k, v in e.items() if k != "text"} for n, e in rows.items()}
    return doc


def ratio_by_round(ours: dict, baselines: dict) -> dict:
    """Interleaved runs: name -> {"ratios": its wall / ours in each round, "median"}. A
    ratio within one round is the figure a drifting machine moves least."""
    mine = [p["wall_s"] for p in ours["profiles"]]
    out = {}
    for name, b in baselines.items():
        walls = [r["wall_s"] for r in b.get("runs", [])]
        if len(walls) == len(mine) and min(mine) > 0:
            ratios = [round(w / m, 3) for w, m in zip(walls, mine)]
            out[name] = {"ratios": ratios, "median": round(statistics.median(ratios), 3)}
    return out


def format_report(doc: dict) -> str:
    from pipeline.profile import format_profile

    lines = [f"model {doc['model']} on {doc['device']} ({doc['dtype']}), batch {doc['batch_size']}, "
             f"tokens/window {doc['tokens_per_window'] or 'free'}, {doc['runs']} run(s)"
             + (", median run:" if doc["runs"] > 1 else ":")]  # fmt: skip
    load = doc.get("load_average_at_start")
    if load and doc.get("cpu_count") and load[0] > 0.5 * doc["cpu_count"]:
        # Other work on the machine slows every decoder, and not evenly: say so.
        lines.insert(0, f"warning: the machine was busy before the bench started (load average "
                        f"{load[0]:.1f} on {doc['cpu_count']} CPUs): wall times are not comparable")  # fmt: skip
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
    by_round = doc.get("ratio_by_round")
    if by_round:
        lines.append("wall time ratio, round by round (interleaved runs; above 1: ours is faster): " + "; ".join(
            f"{n} {' '.join(f'{x:.2f}' for x in e['ratios'])} (median {e['median']:.2f})"
            for n, e in by_round.items()))  # fmt: skip
    g = (doc.get("baselines") or {}).get("generate")
    d = doc.get("decode") or {}
    if g and g.get("decode") and d.get("row_steps_computed"):
        gd = g["decode"]
        lines.append(
            f"slot utilisation: {d.get('engine')} {d['utilisation']:.3f} vs {gd.get('engine')} "
            f"{gd['utilisation']:.3f}; decoder steps {d['steps']} vs {gd['steps']}; wall "
            f"{doc['wall_s']:.2f} s vs {g['wall_s']:.2f} s ({g['wall_s'] / doc['wall_s']:.2f}x)"
        )
    text = "\n".join(lines) + "\n"
    rows = doc.get("accuracy") or doc.get("decoders")
    if rows:
        text += "\n" + format_accuracy(rows, doc.get("reference"))
    return text


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # 1, 5 and 15-minute load averages before any of our work: a busy machine skews timings.
    args.load_at_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    logs.setup(("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)], role="bench")
    # Progress lines (model ready, run n/N) are INFO: shown with -v only (issue 10).
    log.setLevel(logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING)
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
        baseline_names = selected_baselines(args)
        args.batch_size = args.batch_size if args.batch_size is not None else env_batch_size()
        options = DecodeOptions(language=args.language, task=args.task,
                                tokens_per_window=args.tokens_per_window)  # fmt: skip
        PipelineConfig(model="x", batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # Errors name the input, as the CLI's do ("error: talk.mp3 is empty (no bytes)").
    args.label = "<stdin>" if args.source == "-" else args.source
    for flag, path in (("--json", args.json_path), ("--trace", args.trace), ("--plot", args.plot)):
        # Checked before the run, not after it: a bad path lost the run's figures.
        folder = Path(path).parent if path else None
        if path and (Path(path).is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK)):
            print(f"error: {flag} {path}: not a file in a writable folder", file=sys.stderr)
            return 2
    source = args.source
    if source == "-":
        source = sys.stdin.buffer.read()  # read once: every run (and the baseline) reuses it
    elif "://" not in source and not os.path.isfile(source):
        print(f"error: no such file: {source}", file=sys.stderr)
        return 1

    reference = None
    if args.reference:
        try:
            reference = {"path": args.reference, "text": Path(args.reference).read_text(encoding="utf-8")}
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: cannot read --reference {args.reference}: {exc}", file=sys.stderr)
            return 1
        from pipeline.accuracy import normalize

        if not normalize(reference["text"]).split():  # a WER against nothing means nothing
            print(f"error: --reference {args.reference} has no words", file=sys.stderr)
            return 2

    tmp = None
    synthetic = None
    args.model_spec = None
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
            args.model_spec = args.model or env_model()
            weights = _weights_module()
            if weights is not None and hasattr(weights, "check_model"):
                try:  # in seconds, as the CLI does, not after the infer stage fails to load it
                    weights.check_model(args.model_spec)
                except weights.ModelResolveError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    return 2
            model = resolve_model_spec(args.model_spec)
            if model != args.model_spec:
                log.info("model %s resolved to %s", args.model_spec, model)

        info: dict = {}
        starts = [("ours", lambda: ours_rounds(args, model, source, options, ready=info))]
        starts += baseline_starts(args, baseline_names, model, args.model_spec, source, options,
                                  lambda: (info["device"], info["dtype"]))  # fmt: skip
        results = run_rounds(starts, args.runs, args.interleave)
        ours = results.pop("ours")
        baselines = results or None
        doc = report(ours, baselines, args, synthetic, reference)
        sys.stdout.write(format_report(doc))
        wrote = []
        if args.json_path:
            Path(args.json_path).write_text(json.dumps(doc, indent=1, default=str) + "\n")
            wrote.append(f"wrote all figures (JSON) to {args.json_path}")
        if args.trace:
            from pipeline.trace import write_trace

            write_trace(args.trace, ours["outcome"])
            wrote.append(f"wrote the median run's trace to {args.trace} (open it in https://ui.perfetto.dev)")
        if args.plot:
            from pipeline.trace import write_plot

            title = (f"{Path(str(doc['model'])).name}: {doc['audio_s']:.0f} s audio, wall "
                     f"{doc['wall_s']:.2f} s ({doc['rtfx']:.0f}x)")  # fmt: skip
            write_plot(args.plot, ours["outcome"], title=title, ring_slots=doc["ring_slots"])
            wrote.append(f"wrote the median run's timeline plot to {args.plot}")
        if wrote:
            sys.stdout.write("".join(f"{w}\n" for w in wrote))
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
