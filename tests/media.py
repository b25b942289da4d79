"""Audio the tests make for themselves: espeak-ng speech, tones, noise, format conversion."""

from __future__ import annotations

import ctypes
import functools
import subprocess
import wave
from pathlib import Path

import numpy as np

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
# jfk.flac's words: espeak-ng reads them in its place where ../shared/audio is absent.
JFK_WORDS = ("And so my fellow Americans, ask not what your country can do for you. "
             "Ask what you can do for your country.")  # fmt: skip


def shared_audio(name: str) -> Path | None:
    """A real recording from ../shared/audio, or None where that folder is absent."""
    p = SHARED_AUDIO / name
    return p if p.is_file() else None


def write_wav(path, samples: np.ndarray, rate: int = 16000) -> Path:
    """Write float samples in [-1, 1], shape (n,) or (n, channels), as 16-bit PCM WAV."""
    path = Path(path)
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    pcm = (np.clip(x, -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def tone(freq: float, seconds: float, rate: int = 16000, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, rate: int = 16000, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amp * rng.standard_normal(int(round(seconds * rate)))).astype(np.float32)


def colored_noise(kind: str, n: int, rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """(n,) float64 noise of unit mean power: "white", "pink" (1/f power) or "brown" (1/f^2)."""
    x = rng.standard_normal(n)
    if kind != "white":
        # Shaped from 20 Hz up, nothing below (as a microphone and converter record it):
        # 1/f from a fraction of a hertz puts half the power in a slow drift.
        spectrum = np.fft.rfft(x)
        hz = np.fft.rfftfreq(n, 1.0 / rate)
        shape = np.where(hz >= 20.0, 1.0 / np.maximum(hz, 20.0) ** (0.5 if kind == "pink" else 1.0), 0.0)
        x = np.fft.irfft(spectrum * shape, n)
    return x / np.sqrt(np.mean(x**2))


def speech_over_noise(speech: np.ndarray, kind: str, snr_db: float, rng: np.random.Generator,
                      pad_s: float = 3.0, rate: int = 16000) -> np.ndarray:  # fmt: skip
    """``speech`` (its silence before and after cut) with ``pad_s`` of silence each side,
    over ``kind`` noise (``colored_noise``) ``snr_db`` under the speech's mean power (its
    pauses included), scaled to peak at 0.9 at most: float32."""
    speech = np.asarray(speech, dtype=np.float64)
    loud = np.flatnonzero(np.abs(speech) > 1e-4)
    speech = speech[loud[0] : loud[-1] + 1]
    power = np.mean(speech**2)
    pad = np.zeros(int(pad_s * rate))
    speech = np.concatenate([pad, speech, pad])
    mix = speech + colored_noise(kind, len(speech), rng, rate) * np.sqrt(power / 10 ** (snr_db / 10))
    mix *= min(1.0, 0.9 / np.abs(mix).max())
    return mix.astype(np.float32)


def chords(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Music-like sound, float64 of unit mean power: a chord every 2 s (a triad and a bass
    note an octave down, each with two overtones), struck and decaying like a piano's.
    Tonal and loud throughout, no syllables: what a recording's jingle or music bed is to
    the level measures (sound), and what Whisper is apt to caption ("Thank you.")."""
    rng = np.random.default_rng(seed)
    roots = (220.0, 174.61, 261.63, 196.0, 246.94, 164.81)  # A3 F3 C4 G3 B3 E3
    n, step = int(round(seconds * rate)), 2 * rate
    t = np.arange(step) / rate
    envelope = np.minimum(1.0, t / 0.03) * np.exp(-t / 1.2)
    out = np.zeros(n)
    for i in range(0, n, step):
        root = roots[rng.integers(len(roots))]
        note = np.zeros(step)
        for ratio in (1.0, 1.26, 1.5, 0.5):  # major third, fifth, octave below
            for harmonic, amp in ((1, 1.0), (2, 0.4), (3, 0.2)):
                note += amp * np.sin(2 * np.pi * root * ratio * harmonic * t + rng.uniform(0, 2 * np.pi))
        m = min(step, n - i)
        out[i : i + m] = (note * envelope)[:m]
    return out / np.sqrt(np.mean(out**2))


def applause(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Hand claps, float64 of unit mean power: about 60 a second from many hands, each a
    decaying 25 ms click of noise, band-passed to 600-5000 Hz (an FFT mask), with 150 ms
    fades. Loud and broadband, no syllables: what Whisper, decoding it after a sentence,
    captions "Thank you."."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    click = np.exp(-np.arange(400) / 60.0)
    out = np.zeros(n)
    for _ in range(int(seconds * 60)):
        k = int(rng.integers(0, max(1, n - 400)))
        m = min(400, n - k)
        out[k : k + m] += (rng.standard_normal(400) * click * rng.uniform(0.3, 1.0))[:m]
    spectrum = np.fft.rfft(out)
    f = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(f < 600) | (f > 5000)] = 0
    out = np.fft.irfft(spectrum, n)
    t = np.arange(n) / rate
    out *= np.minimum(1.0, np.minimum(t, t[::-1]) / 0.15)
    return out / np.sqrt(np.mean(out**2))


def babble(seconds: float, rate: int = 16000, amp: float = 0.2, seed: int = 0) -> np.ndarray:
    """Noise in bursts like syllables (80-300 ms on, 40-200 ms off, a longer pause now and
    then): level changes like speech, so the chunker finds pauses and windows in it, and a
    model decodes it like any sound. A steady tone is, correctly, no window at all
    (stages/chunk.py skips audio that never rises above its own floor), and steady noise
    only windows the quality gate then passes over."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    env = np.zeros(n, dtype=np.float32)
    i = 0
    while i < n:
        on = int(rng.uniform(0.08, 0.3) * rate)
        off = int((rng.uniform(0.4, 0.7) if rng.random() < 0.1 else rng.uniform(0.04, 0.2)) * rate)
        env[i : i + on] = 1.0
        i += on + off
    return (amp * env * rng.standard_normal(n)).astype(np.float32)


def speech(path, text: str, rate: int = 16000, voice: str = "en", speed: int | None = None) -> Path:
    """espeak-ng speech saved as a WAV at ``rate`` Hz (espeak's own 22050 Hz resampled);
    ``speed``: words a minute (espeak's default 175)."""
    path = Path(path)
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, *(["-s", str(speed)] if speed else []), "-w", str(raw), text],
                   check=True)  # fmt: skip
    convert(raw, path, "-ar", str(rate), "-ac", "1")
    raw.unlink()
    return path


@functools.cache
def _libespeak():
    """(libespeak-ng, its sample rate), initialised once per process (a second
    espeak_Initialize after espeak_Terminate hangs): synchronous, a synthesis's samples and
    events all go to the callback before espeak_Synchronize returns."""
    lib = ctypes.CDLL("libespeak-ng.so.1")
    rate = lib.espeak_Initialize(2, 0, None, 0)  # AUDIO_OUTPUT_SYNCHRONOUS
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed ({rate})")
    return lib, rate


class _EspeakEvent(ctypes.Structure):  # espeak_EVENT, speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]  # fmt: skip


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


def speech_words(
    path, text: str, rate: int = 16000, voice: str = "en"
) -> tuple[Path, list[tuple[str, float]]]:
    """espeak-ng speech like ``speech``'s, and where each word starts: (the WAV at ``rate``
    Hz, [(word, start seconds)]), a truth for word timestamps. Synthesised here by
    libespeak-ng (the library behind the command), whose word events come with the samples:
    one synthesis gives both. (A process's first synthesis has the command's samples, less
    its trailing silence; a later one may hold a pause 40 ms longer, so the command's WAV
    and these events would not always agree.)"""
    path = Path(path)
    pcm, words = [], []

    def on_synth(wav, n, events):
        if n > 0:
            pcm.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while events[i].type != 0:  # espeakEVENT_LIST_TERMINATED
            e = events[i]
            if e.type == 1:  # espeakEVENT_WORD: 1-based character position, ms
                words.append((text[e.text_position - 1 :][: e.length], e.audio_position / 1000))
            i += 1
        return 0

    callback = _SynthCallback(on_synth)
    lib, espeak_rate = _libespeak()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:  # EE_OK
        raise ValueError(f"espeak-ng has no voice {voice!r}")
    lib.espeak_SetSynthCallback(callback)
    data = text.encode()
    # From the first character (POS_CHARACTER) to the end, espeakCHARS_UTF8.
    if lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None) != 0:
        raise RuntimeError("espeak_Synth failed")
    lib.espeak_Synchronize()
    raw = path.with_suffix(".espeak.wav")
    with wave.open(str(raw), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(espeak_rate)
        w.writeframes(np.concatenate(pcm).astype("<i2").tobytes())
    convert(raw, path, "-ar", str(rate), "-ac", "1")
    raw.unlink()
    return path, [(w, t) for w, t in words if w.strip()]


def convert(src, dst, *args: str) -> Path:
    """ffmpeg ``src`` -> ``dst`` with extra output arguments (codec, rate, channels...)."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), *args, str(dst)],
        check=True,
    )
    return Path(dst)


def read_audio(path, rate: int = 16000) -> np.ndarray:
    """Any file ffmpeg reads, as mono float32 samples at ``rate`` Hz."""
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "f32le", "-ac", "1", "-ar", str(rate), "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.float32).copy()


def duration_of(path) -> float:
    """Seconds of audio in a file, by ffprobe (the truth tests compare against)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip())


def window(x: np.ndarray) -> np.ndarray:
    """Zero-pad (or cut) in the audio domain to one 30 s window: (480000,) float32."""
    from pipeline.constants import N_SAMPLES

    out = np.zeros(N_SAMPLES, np.float32)
    out[: min(len(x), N_SAMPLES)] = x[:N_SAMPLES]
    return out
