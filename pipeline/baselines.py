"""The decoders ``bench.py`` measures ours against, and the timing helpers they share.

Each baseline is a *rounds generator*: it loads what it needs on its first step, yields
once after each of ``args.runs`` timed runs and returns (``StopIteration.value``) its
result dict, so that ``bench.run_rounds`` can run decoders one after another or round by
round (``--interleave``). A run is timed the way the seed project worked: the whole
download, ffmpeg decode to 16 kHz float32, then the decoder, so its wall time compares
with ours (download + decode + chunk + infer, overlapped).

- ``chunked_rounds``: transformers' chunked ASR pipeline (30 s chunks, default strides).
- ``sequential_rounds``: transformers' long-form ``generate`` (OpenAI's seek algorithm).
- ``faster_whisper_rounds``: faster-whisper's sequential ``transcribe`` on the
  CTranslate2 directory the weights came from.

All greedy, with the same weights, device and dtype as ours, and none of our decoding
changes (``load_baseline_backend``). ``args`` is bench's parsed command line (``runs``,
``warmup``, ``verbose``, ``batch_size``). Split out of ``bench.py``, which keeps our own
pipeline's rounds and the reports.
"""

from __future__ import annotations

import logging
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np

from pipeline.constants import SAMPLE_RATE
from pipeline.types import DecodeOptions

log = logging.getLogger("bench")

# Figures summarised over runs (minimum and median) besides the per-stage busy time.
SUMMARY_KEYS = ("wall_s", "rtfx", "first_result_s")
WARMUP_S = 35.0  # two windows: every code path of a job runs once before timing


def is_cuda(device: str | None) -> bool:
    if device is None:
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


def sync_device(device: str | None) -> None:
    """Wait for queued GPU work so a timer reads the work's end, not its launch."""
    if is_cuda(device):
        import torch

        torch.cuda.synchronize(device if device and device != "cuda" else None)


def fetch(source) -> bytes:
    """The input's bytes, as the seed project got them (the whole download, in memory)."""
    if isinstance(source, bytes):
        return source
    if "://" in source:
        with urllib.request.urlopen(source, timeout=60) as r:
            return r.read()
    return Path(source).read_bytes()


def median_index(values) -> int:
    """Index of the (lower) median value: a real run, not an average of two."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(order) - 1) // 2]


def summarise(profiles: list[dict], keys=SUMMARY_KEYS) -> dict:
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


def bursts(seconds: float = WARMUP_S) -> np.ndarray:
    """Noise switched on and off every 150 ms (seeded): level changes like speech."""
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    on = (np.arange(n) // int(0.15 * SAMPLE_RATE)) % 2 == 0
    return (0.1 * on * rng.standard_normal(n)).astype(np.float32)


def quiet_transformers(args) -> None:
    if args.verbose < 1:
        import warnings

        import transformers

        transformers.utils.logging.set_verbosity_error()
        warnings.simplefilter("ignore")


def load_baseline_backend(model: str, device: str, dtype: str):
    """(backend, load seconds): the same loader (from_pretrained, sdpa attention, dtype,
    device) as our infer stage, with transformers' own timestamp logits processor: the
    baselines get none of our changes. The chunked and sequential baselines share it."""
    from stages.infer import WhisperBackend

    t0 = time.monotonic()
    backend = WhisperBackend(model, device=device, dtype=dtype, batched_timestamp_rules=False)
    return backend, time.monotonic() - t0


class SharedBackend:
    """The transformers model the chunked and sequential baselines share, loaded on first
    use (``load_baseline_backend``) on the device and in the dtype ``where()`` gives (ours
    resolved them by then: its first run comes first)."""

    def __init__(self, model: str, where):
        self.model, self.where = model, where
        self.backend, self.load_s = None, 0.0

    def get(self):
        if self.backend is None:
            self.backend, self.load_s = load_baseline_backend(self.model, *self.where())
        return self.backend, self.load_s

    def drop(self) -> None:
        import gc

        self.backend = None
        gc.collect()


def timed_rounds(args, source, device: str, label: str, transcribe, after_run=None):
    """``args.runs`` timed runs of: the whole download, ffmpeg decode to 16 kHz float32
    (transformers' ``ffmpeg_read``, as the seed did), then ``transcribe(audio) -> text``.
    ``after_run(run)`` may add figures to each run's dict. Each run keeps its text. A
    generator (see ``ours_rounds``): it yields after each run and returns the runs. With
    ``args.warmup``, one untimed ``transcribe`` of noise bursts comes first (every code
    path once, as ours gets its warm-up job)."""
    from transformers.pipelines.audio_utils import ffmpeg_read

    if args.warmup:
        transcribe(bursts())
    runs = []
    for i in range(args.runs):
        sync_device(device)
        t_start = time.monotonic()
        data = fetch(source)
        t_dl = time.monotonic()
        audio = ffmpeg_read(data, SAMPLE_RATE)
        t_dec = time.monotonic()
        text = transcribe(audio)
        sync_device(device)
        t_end = time.monotonic()
        wall = t_end - t_start
        audio_s = len(audio) / SAMPLE_RATE
        run = {
            "wall_s": round(wall, 4),
            "rtfx": round(audio_s / wall, 2) if wall > 0 else None,
            "download_s": round(t_dl - t_start, 4),
            "decode_s": round(t_dec - t_dl, 4),
            "asr_s": round(t_end - t_dec, 4),
            "audio_s": round(audio_s, 3),
            "text_chars": len(text),
            "text": text,
        }
        if after_run is not None:
            after_run(run)
        log.info("%s run %d/%d: wall %.2f s", label, i + 1, args.runs, wall)
        runs.append(run)
        yield
    return runs


def timed_result(runs: list[dict], **extra) -> dict:
    """The median run's figures at the top level (its text as "text"), then ``extra``, then
    every run (without texts) and a summary."""
    med = runs[median_index([r["wall_s"] for r in runs])]
    text = med["text"]
    runs = [{k: v for k, v in r.items() if k != "text"} for r in runs]
    med = {k: v for k, v in med.items() if k != "text"}
    return {**med, **extra, "text": text, "runs": runs, "summary": summarise(runs, ("wall_s", "rtfx"))}


def chunked_rounds(args, shared: SharedBackend, source, options: DecodeOptions, device: str):
    """The seed project's method, timed the same way as ours: the whole download, ffmpeg
    decode to 16 kHz float32, then transformers' chunked ASR pipeline (30 s windows with
    its default 5 s strides) with our generate kwargs and timestamps. A rounds generator
    (see ``ours_rounds``) returning its result."""
    import torch
    from transformers import pipeline as hf_pipeline

    quiet_transformers(args)
    backend, load_s = shared.get()
    t0 = time.monotonic()
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
    load_s += time.monotonic() - t0
    shapes: list[tuple[int, int]] = []
    generate = asr.model.generate

    def counting_generate(*a, **kw):  # windows and tokens the baseline decoded
        out = generate(*a, **kw)
        seqs = out["sequences"] if isinstance(out, dict) else out
        shapes.append((int(seqs.shape[0]), int(seqs.shape[1])))
        return out

    def transcribe(audio):
        shapes.clear()
        # Counted on this instance during this call only: the sequential baseline shares
        # the model, and its runs may come between these (--interleave).
        asr.model.generate = counting_generate
        try:
            return asr(audio, return_timestamps=True, generate_kwargs=dict(gen)).get("text", "")
        finally:
            del asr.model.generate  # the class's generate again

    def after_run(run):
        run["windows"] = sum(b for b, _ in shapes)
        run["generate_calls"] = len(shapes)
        run["sequence_len_max"] = max((n for _, n in shapes), default=0)

    runs = yield from timed_rounds(args, source, device, "chunked baseline", transcribe, after_run)
    return timed_result(
        runs,
        model_load_s=round(load_s, 3),
        method=f"transformers pipeline(chunk_length_s=30, batch_size={args.batch_size})",
        generate_kwargs={k: v for k, v in gen.items()},
    )


def sequential_generate_kwargs(backend, options: DecodeOptions) -> dict:
    """transformers' defaults for greedy long-form decoding (OpenAI's seek algorithm):
    timestamps on, one beam, no sampling, no temperature fallback (temperature None, no
    compression-ratio / log-prob thresholds), each 30 s segment decoded without the
    previous one's text as a prompt. Language and task as our backend passes them (an
    English-only model takes neither); ``--tokens-per-window`` fixes every segment's length."""
    ours = backend.generate_kwargs(options)  # validates language/task against the model
    kw = {"return_timestamps": True, "num_beams": 1, "do_sample": False, "condition_on_prev_tokens": False}
    for key in ("language", "task"):
        if key in ours:
            kw[key] = ours[key]
    if options.tokens_per_window is not None:
        kw["min_new_tokens"] = kw["max_new_tokens"] = options.tokens_per_window
    return kw


def sequential_rounds(args, shared: SharedBackend, source, options: DecodeOptions, device: str):
    """transformers' sequential long-form ``generate`` on the whole audio, batch of one: the
    features of all of it (``truncation=False, padding="longest", return_attention_mask=True``;
    audio of 30 s or less is padded to one 30 s window, as short-form requires). A rounds
    generator."""
    quiet_transformers(args)
    backend, load_s = shared.get()
    gen = sequential_generate_kwargs(backend, options)
    transcribe = sequential_transcriber(backend, gen, device)
    runs = yield from timed_rounds(args, source, device, "sequential baseline", transcribe)
    return timed_result(
        runs,
        model_load_s=round(load_s, 3),
        method="transformers generate, sequential long-form (batch 1)",
        generate_kwargs=gen,
    )


def sequential_transcriber(backend, gen: dict, device: str):
    """``transcribe(audio) -> text``: sequential long-form ``generate`` with the keyword
    arguments ``gen`` (``sequential_generate_kwargs``) on 16 kHz float32 audio."""
    import torch

    from pipeline.constants import N_SAMPLES

    fe = backend.feature_extractor

    @torch.inference_mode()
    def transcribe(audio):
        long_form = len(audio) > N_SAMPLES
        feats = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True,
                   **({"truncation": False, "padding": "longest"} if long_form else {}))  # fmt: skip
        x = feats.input_features.to(device, backend._torch_dtype)
        mask = feats.attention_mask.to(device)
        seqs = backend.model.generate(x, attention_mask=mask, **gen)
        seqs = seqs["sequences"] if isinstance(seqs, dict) else seqs
        return backend.tokenizer.batch_decode(seqs, skip_special_tokens=True)[0]

    return transcribe


def faster_whisper_rounds(args, ct2_dir: str, source, options: DecodeOptions, device: str, dtype: str):
    """faster-whisper's sequential ``WhisperModel.transcribe`` on the CTranslate2 directory
    the transformers checkpoint came from: greedy, temperature 0 only (no fallback), no
    previous-text prompt, no VAD; its other options at their defaults. On CPU it gets as many
    threads as torch uses for the other decoders. A rounds generator."""
    import torch
    from faster_whisper import WhisperModel

    dev, _, index = device.partition(":")
    t0 = time.monotonic()
    model = WhisperModel(
        ct2_dir,
        device="cuda" if dev == "cuda" else "cpu",
        device_index=int(index or 0),
        compute_type=dtype,
        cpu_threads=torch.get_num_threads() if dev != "cuda" else 0,
    )
    load_s = time.monotonic() - t0
    kw = {"language": options.language, "task": options.task, "beam_size": 1, "best_of": 1,
          "temperature": [0.0], "condition_on_previous_text": False, "vad_filter": False}  # fmt: skip
    if options.tokens_per_window is not None:
        kw["max_new_tokens"] = options.tokens_per_window  # it has no minimum: an upper bound only
    if not model.model.is_multilingual:
        kw["language"], kw["task"] = None, "transcribe"  # English-only: it takes neither

    def transcribe(audio):
        segments, _info = model.transcribe(audio, **kw)
        return "".join(s.text for s in segments)

    runs = yield from timed_rounds(args, source, device, "faster-whisper baseline", transcribe)
    return timed_result(
        runs,
        model_load_s=round(load_s, 3),
        method=f"faster-whisper WhisperModel.transcribe, sequential ({ct2_dir})",
        transcribe_kwargs=kw,
        compute_type=dtype,
    )


def faster_whisper_unavailable(ct2_dir: str | None, why: str) -> str | None:
    """Why the faster-whisper baseline cannot run, or None when it can."""
    try:
        import faster_whisper  # noqa: F401
    except ImportError as exc:
        return f"faster_whisper is not importable ({exc})"
    if ct2_dir is None:
        return why
    d = Path(ct2_dir)
    if not (d / "tokenizer.json").is_file():
        return f"{ct2_dir} has no tokenizer.json (faster-whisper would fetch one from the hub)"
    if not any((d / f"vocabulary.{ext}").is_file() for ext in ("json", "txt")):
        return f"{ct2_dir} has no vocabulary.json/.txt (CTranslate2 cannot load it)"
    return None
