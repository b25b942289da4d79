"""``python -m pipeline SOURCE [options]``: transcribe a file, a URL or standard input.

The transcript alone goes to stdout (or ``--output``); logs and the profile go to stderr.
Exit 0 on success; on failure a non-zero exit and one line ``error: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from pipeline import logs
from pipeline.config import Job, PipelineConfig, env_batch_size, env_model
from pipeline.errors import PipelineError
from pipeline.types import TASKS, DecodeOptions
from stages.quality import QualityConfig

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from pipeline.formats import FORMATS

    p = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Transcribe long audio with Whisper through a streaming, batched pipeline.",
    )
    p.add_argument("source", help="audio or video file, http(s) URL, or - for standard input")
    p.add_argument("--model", default=None, help="hub id or local checkpoint directory "
                   "(default: $MODEL_ID, else openai/whisper-large-v3-turbo)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per inference batch (default: $MODEL_BATCH_SIZE, else 16)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present)")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="model precision (default: float16 on cuda, float32 on cpu)")
    p.add_argument("--language", default=None, help="language code, e.g. en (default: detect)")
    p.add_argument("--task", default="transcribe", choices=TASKS)
    p.add_argument("--format", default="text", choices=FORMATS, dest="fmt")
    p.add_argument("--output", "-o", default=None, help="write the transcript here, not stdout")
    p.add_argument("--stall-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up on a download that sends nothing for this long (default: 30)")
    p.add_argument("--plain", action="store_true",
                   help="decode each window once and keep what the model said: no re-decodes, "
                        "filters or energy gate (to measure what they add)")
    p.add_argument("--profile", action="store_true", help="print a stage-level profile on stderr")
    p.add_argument("--backend", default="whisper", help=argparse.SUPPRESS)  # module:Class double
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr")
    return p


def _config(args) -> PipelineConfig:
    kw = dict(
        model=args.model or env_model(),
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size if args.batch_size is not None else env_batch_size(),
        inherit_stdin=args.source == "-",
        stall_timeout_s=args.stall_timeout,
        log_level=("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)],
    )
    if args.plain:
        kw["quality"] = QualityConfig(enabled=False)
    return PipelineConfig(**kw)


def _precheck_source(source: str) -> None:
    """Cheap checks worth doing before any process starts."""
    if source == "-" or "://" in source:
        return
    if not os.path.exists(source):
        raise PipelineError(f"no such file: {source}")
    if os.path.isdir(source):
        raise PipelineError(f"{source} is a directory, not an audio file")


def _on_sigterm(signum, frame):
    raise KeyboardInterrupt()


def main(argv=None) -> int:
    from pipeline.formats import format_transcript
    from pipeline.runtime import Pipeline

    args = build_parser().parse_args(argv)
    level = ("WARNING", "INFO", "DEBUG")[min(args.verbose, 2)]
    logs.setup(level, role="driver")
    try:
        cfg = _config(args)
        job = Job(args.source, DecodeOptions(language=args.language, task=args.task), profile=args.profile)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _precheck_source(args.source)
        with Pipeline(cfg) as pipe:
            outcome = pipe.run_job(job)
        text = format_transcript(outcome.transcript, args.fmt)
        if args.output:
            tmp = f"{args.output}.part"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.output)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
        if args.profile:
            from pipeline.profile import format_profile, profile_from_outcome

            sys.stderr.write(format_profile(profile_from_outcome(outcome)))
        return 0
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # e.g. --output in a missing directory
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_FAILED
