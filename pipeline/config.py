"""Configuration: frozen dataclasses validated before any process starts or a GPU is touched
(openai/whisper's ``DecodingOptions`` / ``_verify_options`` practice)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from pipeline.constants import N_SAMPLES, PCM_ITEMSIZE, SAMPLE_RATE
from pipeline.types import DecodeOptions
from stages.chunk import WindowPlan
from stages.quality import QualityConfig

DEFAULT_MODEL = "openai/whisper-large-v3-turbo"
DEFAULT_BATCH_SIZE = 16
MAX_BATCH_SIZE = 1024


def env_model() -> str:
    return os.environ.get("MODEL_ID") or DEFAULT_MODEL


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        try:  # "64.0": what a number field of RunPod's hub form may send
            as_float = float(raw)
        except ValueError:
            as_float = None
        if as_float is None or not as_float.is_integer():
            raise ValueError(f"{name} must be an integer, not {raw!r}") from None
        value = int(as_float)
    if value < 1:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


DEFAULT_MAX_AUDIO_S = 12 * 3600.0


def env_max_audio_s() -> float:
    """``MAX_AUDIO_S`` from the environment (seconds of audio one job may have), else 12 h."""
    raw = os.environ.get("MAX_AUDIO_S", "").strip()
    if not raw:
        return DEFAULT_MAX_AUDIO_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"MAX_AUDIO_S must be a number of seconds, not {raw[:40]!r}") from None
    if not value > 0:
        raise ValueError(f"MAX_AUDIO_S must be positive, not {raw[:40]!r}")
    return value


def env_batch_size() -> int:
    """``MODEL_BATCH_SIZE`` from the environment (the seed project's knob), else 16."""
    return check_batch_size(env_int("MODEL_BATCH_SIZE", DEFAULT_BATCH_SIZE), "MODEL_BATCH_SIZE")


def check_batch_size(value, what: str = "batch size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        raise ValueError(f"{what} must be an integer from 1 to {MAX_BATCH_SIZE}, not {value!r}")
    return value


ENGINES = ("slots", "generate")  # PipelineConfig.engine
INFER_STARTS = ("auto", "spawn", "forkserver")  # PipelineConfig.infer_start


@dataclass(frozen=True)
class PipelineConfig:
    """Everything fixed for the life of a pipeline (its processes, rings and model)."""

    model: str = field(default_factory=env_model)
    backend: str = "whisper"  # or "package.module:Class" with the same interface
    device: str | None = None  # None: cuda when present, else cpu
    dtype: str | None = None  # None: float16 on cuda, float32 on cpu
    batch_size: int = field(default_factory=env_batch_size)  # decoder slots (windows in flight)
    # "slots": our decode loop (stages/engine.py, in-flight batching); "generate": one
    # transformers generate call per batch (kept to compare against: bench --engine).
    engine: str = "slots"
    # How the infer stage starts: "auto" spawns it in a process's first pipeline and forks
    # it from the preloaded fork server in later ones (pipeline/runtime/driver.py,
    # _infer_context); "spawn" or "forkserver" always (measurements that compare pipelines
    # side by side start theirs alike).
    infer_start: str = "auto"
    window_plan: WindowPlan = WindowPlan()  # where windows are cut (stages/chunk.py)
    quality: QualityConfig = QualityConfig()  # re-decodes and filters (stages/quality.py, stages/review.py)
    # Ring sizes. Memory in use is fixed by these, whatever the audio's length.
    byte_block: int = 256 * 1024
    byte_slots: int = 16
    pcm_block_samples: int = 10 * SAMPLE_RATE
    pcm_slots: int = 8
    window_slots: int = 16
    batch_wait_s: float = 0.2  # flush a partial batch when no window came for this long
    # Jobs the stages work on at once (a thread each in source, decode and chunk; their
    # windows share the decoder round-robin); later jobs wait their turn in order.
    concurrent_jobs: int = 4
    # Source stage.
    connect_timeout_s: float = 10.0
    stall_timeout_s: float = 30.0
    max_redirects: int = 5
    max_download_bytes: int | None = None
    # Audio longer than this is refused when its header says so, before decoding, and
    # stopped when it runs past it (a 3 Hz WAV header once declared 3 hours).
    max_audio_s: float | None = field(default_factory=env_max_audio_s)
    allow_private_urls: bool = True  # the RunPod worker turns this off
    inherit_stdin: bool = False  # the source stage may read our standard input ("-")
    log_level: str = "WARNING"

    def __post_init__(self):
        check_batch_size(self.batch_size)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a hub id or a directory")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.infer_start not in INFER_STARTS:
            raise ValueError(f"infer_start must be one of {', '.join(INFER_STARTS)}, not {self.infer_start!r}")
        if not isinstance(self.window_plan, WindowPlan) or not isinstance(self.quality, QualityConfig):
            raise ValueError("window_plan and quality must be a WindowPlan and a QualityConfig")
        if self.device is not None and not (
            self.device == "cpu" or self.device.startswith("cuda")
        ):
            raise ValueError(f"device must be cpu, cuda or cuda:N, not {self.device!r}")
        if self.dtype not in (None, "float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, not {self.dtype!r}")
        for name in ("byte_block", "byte_slots", "pcm_block_samples", "pcm_slots", "window_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if isinstance(self.concurrent_jobs, bool) or not isinstance(self.concurrent_jobs, int) \
                or not 1 <= self.concurrent_jobs <= 64:
            raise ValueError(f"concurrent_jobs must be an integer from 1 to 64, not {self.concurrent_jobs!r}")
        if self.max_audio_s is not None and not self.max_audio_s > 0:
            raise ValueError("max_audio_s must be positive (or None: no limit)")
        for name in ("batch_wait_s", "connect_timeout_s", "stall_timeout_s"):
            v = getattr(self, name)
            # not 0 < v < inf: also refuses nan, which compares false with everything (a
            # stall limit of nan failed a download that was sending data at once)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, not {v!r}")

    @property
    def shm_bytes(self) -> int:
        """Shared memory the rings take, in bytes."""
        return (
            self.byte_block * self.byte_slots
            + self.pcm_block_samples * PCM_ITEMSIZE * self.pcm_slots
            + N_SAMPLES * PCM_ITEMSIZE * self.window_slots
        )


@dataclass(frozen=True)
class Job:
    """One transcription request, as the driver hands it to the source stage."""

    source: str | bytes  # URL, path, "-" (stdin) or the audio bytes themselves
    options: DecodeOptions = DecodeOptions()
    batch_size: int | None = None  # None: the pipeline's (callers bound it: MAX_BATCH_SIZE)
    label: str | None = None  # how errors name the input; default from the source
    job_id: str | None = None  # shown on log lines (the RunPod job id)
    profile: bool = False  # record busy spans for a trace

    def __post_init__(self):
        if not isinstance(self.source, (str, bytes)) or (
            isinstance(self.source, str) and not self.source
        ):
            raise ValueError("source must be a URL, a path, '-' or bytes")
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
