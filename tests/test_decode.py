"""Tests for stages/decode.py: real ffmpeg on audio the tests make for themselves."""

from __future__ import annotations

import io
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.constants import PCM_DTYPE, SAMPLE_RATE
from stages.decode import (
    SNIFF_LIMIT,
    TIMELINE_FILTER,
    DecodeError,
    decode_stream,
    downmix,
    ffmpeg_command,
    read_wav_header,
    sniff_layout,
)
from tests import media

pytestmark = pytest.mark.timeout(60)

TONE_HZ = 1000.0
SECONDS = 3.0
ROOT = Path(__file__).resolve().parents[1]


def blocks_of(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def decode_file(path, block_size=65536, **kwargs) -> np.ndarray:
    """Decode ``path`` fed in ``block_size`` pieces; checks the block contract on the way."""
    block_samples = kwargs.setdefault("block_samples", 16000)
    out = list(decode_stream(blocks_of(Path(path).read_bytes(), block_size), **kwargs))
    assert out, "no PCM at all"
    for b in out:
        assert b.dtype == PCM_DTYPE and b.ndim == 1
    assert all(len(b) == block_samples for b in out[:-1])
    assert 1 <= len(out[-1]) <= block_samples
    return np.concatenate(out)


def peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(x)


def ffmpeg_children() -> list[psutil.Process]:
    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() == "ffmpeg" and p.status() != psutil.STATUS_ZOMBIE:
                procs.append(p)
        except psutil.NoSuchProcess:
            pass
    return procs


def endless_wav():
    """A WAV header that promises ~4 GB, then silence forever: ffmpeg never finishes."""
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    yield b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack(
        "<I", 16
    ) + fmt
    yield b"data" + struct.pack("<I", 0xFFFFFFF0)
    while True:
        yield bytes(32000)


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    media.write_wav(d / "tone48k.wav", media.tone(TONE_HZ, SECONDS, 48000), 48000)
    media.speech(d / "speech.wav", "Hello world. This is a test of the audio decoder.")
    return d


@pytest.fixture(scope="module")
def tone_wav(media_dir):
    return media_dir / "tone48k.wav"


@pytest.fixture(scope="module")
def speech_wav(media_dir):
    return media_dir / "speech.wav"


# --- formats -----------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize(
    "codec", ["pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le", "pcm_u8"]
)
def test_wav_variants(tmp_path, tone_wav, codec, rate):
    path = media.convert(tone_wav, tmp_path / "t.wav", "-c:a", codec, "-ar", str(rate))
    x = decode_file(path)
    assert abs(len(x) / SAMPLE_RATE - media.duration_of(path)) < 0.1
    assert np.abs(x).max() <= 1.0
    assert 0.3 < np.sqrt(np.mean(x**2)) < 0.4  # 0.5-amplitude sine: rms 0.354
    assert abs(peak_hz(x) - TONE_HZ) < 2.0  # resampling kept the pitch


COMPRESSED = {
    "mp3": ("a.mp3", "-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "64k"),
    "flac": ("a.flac", "-ar", "44100", "-c:a", "flac"),
    "ogg-opus": ("a.ogg", "-c:a", "libopus", "-b:a", "32k"),
    "ogg-vorbis": ("a.ogg", "-ar", "22050", "-c:a", "libvorbis"),
    "m4a-aac": ("a.m4a", "-ar", "44100", "-c:a", "aac", "-b:a", "64k"),
    "m4a-aac-faststart": ("a.m4a", "-c:a", "aac", "-movflags", "+faststart"),
    "mov-aac": ("a.mov", "-c:a", "aac"),
    "webm-opus": ("a.webm", "-c:a", "libopus"),
}


@pytest.mark.parametrize("fmt", list(COMPRESSED))
def test_compressed_formats(tmp_path, speech_wav, fmt):
    name, *args = COMPRESSED[fmt]
    path = media.convert(speech_wav, tmp_path / name, *args)
    x = decode_file(path, name=name)
    assert abs(len(x) / SAMPLE_RATE - media.duration_of(path)) < 0.1
    assert np.abs(x).max() <= 1.0
    assert np.abs(x).max() > 0.05  # speech, not silence


def _video(path: Path, *extra: str, audio: bool = True) -> Path:
    inputs = ["-f", "lavfi", "-i", f"testsrc=size=128x96:rate=10:duration={SECONDS}"]
    if audio:
        inputs += ["-f", "lavfi", "-i", f"sine=frequency={TONE_HZ:g}:sample_rate=44100"]
        inputs += ["-c:a", "aac", "-shortest"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, "-c:v", "libx264"]
        + ["-preset", "ultrafast", "-pix_fmt", "yuv420p", *extra, str(path)],
        check=True,
    )
    return path


@pytest.mark.parametrize("faststart", [False, True])
def test_mp4_video_with_audio(tmp_path, faststart, caplog):
    extra = ("-movflags", "+faststart") if faststart else ()
    path = _video(tmp_path / "v.mp4", *extra)
    head = path.read_bytes()[:4096]
    assert sniff_layout(head) == ("stream" if faststart else "spool")
    caplog.set_level(logging.INFO, logger="stages.decode")
    x = decode_file(path)
    assert abs(len(x) / SAMPLE_RATE - media.duration_of(path)) < 0.1
    assert abs(peak_hz(x) - TONE_HZ) < 2.0
    assert ("spooling" in caplog.text) == (not faststart)


def test_m4a_default_layout_is_spooled_and_cleaned_up(tmp_path, caplog):
    # 60 s: small files fit ffmpeg's read buffer and happen to work from a pipe even
    # with moov at the end ("partial file" / "Invalid data" beyond ~100 KB).
    wav = media.write_wav(tmp_path / "long.wav", media.tone(TONE_HZ, 60.0), 16000)
    path = media.convert(wav, tmp_path / "a.m4a", "-c:a", "aac", "-b:a", "32k")
    data = path.read_bytes()
    # Ground truth for the spool path: ffmpeg's default MP4 puts moov after mdat.
    assert data.find(b"mdat") < data.find(b"moov")
    caplog.set_level(logging.INFO, logger="stages.decode")

    def tiny_then_big():  # the box headers arrive split across many blocks
        for i in range(0, 201, 3):
            yield data[i : i + 3]
        yield data[201:]

    x = np.concatenate(list(decode_stream(tiny_then_big(), block_samples=48000)))
    assert abs(len(x) / SAMPLE_RATE - media.duration_of(path)) < 0.1
    assert abs(peak_hz(x) - TONE_HZ) < 2.0
    spooled = [r.args[1] for r in caplog.records if "spooling" in r.getMessage()]
    assert len(spooled) == 1
    assert not os.path.exists(spooled[0])


def test_m4a_faststart_streams(tmp_path, speech_wav, caplog):
    path = media.convert(
        speech_wav, tmp_path / "a.m4a", "-c:a", "aac", "-movflags", "+faststart"
    )
    caplog.set_level(logging.INFO, logger="stages.decode")
    x = decode_file(path, block_size=1000)
    assert abs(len(x) / SAMPLE_RATE - media.duration_of(path)) < 0.1
    assert "spooling" not in caplog.text


def test_stereo_downmix(tmp_path):
    left, right = media.tone(440, SECONDS, 44100), media.tone(1500, SECONDS, 44100)
    path = media.write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), 44100)
    x = decode_file(path)
    assert abs(len(x) / SAMPLE_RATE - SECONDS) < 0.01
    spectrum = np.abs(np.fft.rfft(x))
    hz = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    top2 = sorted(hz[np.argsort(spectrum)[-2:]])
    assert abs(top2[0] - 440) < 2 and abs(top2[1] - 1500) < 2  # both channels are in


def test_phase_inverted_stereo_is_not_mixed_to_silence(tmp_path, caplog):
    """One channel the other upside down (a phase-inverted mic lead): ffmpeg's mix, like
    openai/whisper's and faster-whisper's, is silence, and the transcript was empty with
    no error. Mixed as the side (L - R) instead, with a warning; ordinary stereo and mono
    come out as ffmpeg mixes them, sample for sample."""
    x = media.babble(6.0, rate=44100, amp=0.3)
    path = media.write_wav(tmp_path / "inv.wav", np.stack([x, -x], axis=1), 44100)
    caplog.set_level(logging.WARNING, logger="stages.decode")
    y = decode_file(path)
    mono = decode_file(media.write_wav(tmp_path / "mono.wav", x, 44100))
    assert len(y) == len(mono)
    # The side of (x, -x) is sqrt(2) x, as loud as the mid of (x, x) is.
    np.testing.assert_allclose(y, np.clip(mono * np.float32(2 * 0.70710677), -1, 1), atol=1e-5)
    assert "cancel out" in caplog.text
    caplog.clear()
    same = decode_file(media.write_wav(tmp_path / "same.wav", np.stack([x, x], axis=1), 44100))
    assert np.abs(same).max() > 0.2 and "cancel" not in caplog.text
    # Two different voices, one per side: the mid, as ffmpeg mixes it (no switching).
    z = media.babble(6.0, rate=44100, amp=0.3, seed=1)
    two = media.write_wav(tmp_path / "two.wav", np.stack([x, z], axis=1), 44100)
    got = decode_file(two)
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(two), "-af", TIMELINE_FILTER, "-ac", "1", "-ar",
                          str(SAMPLE_RATE), "-f", "f32le", "-"], capture_output=True, check=True).stdout  # fmt: skip
    np.testing.assert_array_equal(got, np.clip(np.frombuffer(out, np.float32), -1, 1))
    assert "cancel" not in caplog.text


def test_downmix_and_wav_header():
    left = np.array([0.5, -0.25, 0.0, 1.0], np.float32)
    mono, cancel = downmix(np.stack([left, left], 1))
    assert not cancel and mono.dtype == np.float32
    np.testing.assert_array_equal(mono, left * np.float32(0.70710677) + left * np.float32(0.70710677))
    side, cancel = downmix(np.stack([left, -left], 1))
    assert cancel and side.max() > 0
    assert downmix(np.zeros((8, 2), np.float32))[1] is False  # silence: the mid
    # The header: ffmpeg's tags skipped, the channels read; an early end is None.
    fmt = struct.pack("<HHIIHH", 3, 2, SAMPLE_RATE, SAMPLE_RATE * 8, 8, 32)
    head = b"RIFF\xff\xff\xff\xffWAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    head += b"LIST" + struct.pack("<I", 5) + b"INFOx\x00" + b"data\xff\xff\xff\xff"
    pipe = io.BytesIO(head + b"\x00" * 16)
    assert read_wav_header(pipe) == 2 and pipe.read() == b"\x00" * 16
    assert read_wav_header(io.BytesIO(head[:30])) is None
    assert read_wav_header(io.BytesIO(b"")) is None
    with pytest.raises(DecodeError, match="no WAV header"):
        read_wav_header(io.BytesIO(b"\x00" * 64))
    bad = head.replace(struct.pack("<I", SAMPLE_RATE), struct.pack("<I", 8000), 1)
    with pytest.raises(DecodeError, match="8000 Hz"):
        read_wav_header(io.BytesIO(bad))


def test_5_1_downmix(tmp_path):
    chans = np.stack(
        [media.tone(300 + 200 * c, SECONDS, 48000, amp=0.3) for c in range(6)], 1
    )
    wav = media.write_wav(tmp_path / "six.wav", chans, 48000)
    path = media.convert(
        wav, tmp_path / "six.flac", "-channel_layout", "5.1", "-c:a", "flac"
    )
    x = decode_file(path)
    assert abs(len(x) / SAMPLE_RATE - media.duration_of(path)) < 0.1
    assert np.abs(x).max() <= 1.0
    assert np.sqrt(np.mean(x**2)) > 0.05


def test_full_scale_input_stays_in_range(tmp_path):
    square = np.sign(media.tone(3000, 1.0, 44100)).astype(np.float32)
    path = media.write_wav(tmp_path / "sq.wav", square, 44100)
    x = decode_file(path)
    assert (
        np.abs(x).max() <= 1.0
    )  # resampling a square wave overshoots without the clip


SHARED = [
    ("jfk.flac", 11.0),
    ("hotwords.mp3", 4.0),
    ("multilingual.mp3", 60.0),
    ("stereo_diarization.wav", 5.0),
]


@pytest.mark.parametrize("name, seconds", SHARED)
def test_shared_recordings(name, seconds):
    path = media.shared_audio(name)
    if path is None:
        pytest.skip(f"../shared/audio/{name} is absent")
    x = decode_file(path, block_size=256 * 1024, block_samples=160000, name=name)
    got = len(x) / SAMPLE_RATE
    assert abs(got - seconds) < 0.1
    assert abs(got - media.duration_of(path)) < 0.1
    assert np.abs(x).max() <= 1.0


def test_decoding_streams(tmp_path):
    """PCM comes out while most of a long input has not been read yet."""
    path = media.write_wav(tmp_path / "long.wav", media.tone(440, 60.0, 16000), 16000)
    data = path.read_bytes()
    consumed = []

    def counted():
        for block in blocks_of(data, 32 * 1024):
            consumed.append(len(block))
            yield block

    gen = decode_stream(counted(), block_samples=16000)
    first = next(gen)
    assert len(first) == 16000
    assert sum(consumed) < len(data) / 2
    rest = list(gen)
    assert sum(map(len, rest)) + len(first) == 60 * 16000


# --- bad input -----------------------------------------------------------------------


def _png(tmp_path) -> bytes:
    path = tmp_path / "img.png"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=c=red:s=64x64",
        ]
        + ["-frames:v", "1", str(path)],
        check=True,
    )
    return path.read_bytes()


BAD = {
    "html": (
        b"<!DOCTYPE html><html><head><title>404</title></head>" + b"<p>no</p>" * 500
    ),
    "png-signature-junk": b"\x89PNG\r\n\x1a\n" + b"junk" * 1000,
    "random": np.random.default_rng(0).bytes(200_000),
    "tiny": b"abc",
}


@pytest.mark.parametrize("kind", [*BAD, "png"])
def test_bad_input_fails_fast_with_one_line(tmp_path, kind):
    data = _png(tmp_path) if kind == "png" else BAD[kind]
    t0 = time.monotonic()
    with pytest.raises(DecodeError) as e:
        list(decode_stream(blocks_of(data, 4096), name="clip.mp3"))
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "clip.mp3" in msg
    if kind == "png":  # ffmpeg reads a PNG fine: as a picture, without sound
        assert msg.startswith("clip.mp3 has no audio stream")
    elif kind in ("html", "random"):
        assert msg == "cannot decode clip.mp3: Invalid data found when processing input"
    assert not ffmpeg_children()


@pytest.mark.parametrize("blocks", [[], [b""], [b"", b"", b""]])
def test_empty_input(blocks):
    with pytest.raises(DecodeError, match=r"^x\.wav is empty"):
        list(decode_stream(iter(blocks), name="x.wav"))


def test_header_only_wav(tmp_path):
    path = media.write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(DecodeError, match="^e.wav contains no audio samples"):
        list(decode_stream([path.read_bytes()], name="e.wav"))


def test_video_without_audio(tmp_path):
    path = _video(tmp_path / "silent.mp4", "-movflags", "+faststart", audio=False)
    with pytest.raises(
        DecodeError, match=r"^v\.mp4 has no audio stream \(ffmpeg: .*stream"
    ):
        list(decode_stream(blocks_of(path.read_bytes()), name="v.mp4"))


# --- failures upstream, early close, dying parent ------------------------------------


class Upstream(Exception):
    pass


@pytest.mark.parametrize("exc_type", [Upstream, BrokenPipeError, ValueError])
@pytest.mark.parametrize("where", ["sniff", "pipe", "spool"])
def test_iterator_exception_propagates(tmp_path, speech_wav, exc_type, where):
    if where == "spool":
        data = media.convert(speech_wav, tmp_path / "a.m4a", "-c:a", "aac").read_bytes()
    else:
        data = speech_wav.read_bytes()
    err = exc_type("upstream failed")

    def failing():
        if where != "sniff":
            yield data[:20000]
            yield data[20000:40000]
        raise err

    with pytest.raises(exc_type) as e:
        list(decode_stream(failing(), block_samples=1000))
    assert e.value is err
    assert not ffmpeg_children()


def test_close_early_kills_ffmpeg():
    gen = decode_stream(endless_wav(), block_samples=8000)
    assert len(next(gen)) == 8000
    assert len(ffmpeg_children()) == 1
    t0 = time.monotonic()
    gen.close()
    assert time.monotonic() - t0 < 5
    assert not ffmpeg_children()
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("decode-")]


def test_ffmpeg_dies_with_killed_parent():
    # The child starts decoding an endless input, then forks a sleeper that inherits
    # ffmpeg's pipes, so ffmpeg sees no EOF when the child dies: only PR_SET_PDEATHSIG
    # can end it.
    script = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, sys.argv[1])
        import psutil
        from stages.decode import decode_stream
        from tests.test_decode import endless_wav
        gen = decode_stream(endless_wav(), block_samples=8000)
        next(gen)
        (ffmpeg,) = psutil.Process().children()
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        print(ffmpeg.pid, pid, flush=True)
        time.sleep(30)
        """)
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT)], stdout=subprocess.PIPE, cwd=ROOT
    )
    sleeper = None
    try:
        ffmpeg_pid, sleeper = map(int, child.stdout.readline().split())
        ffmpeg = psutil.Process(ffmpeg_pid)
        assert ffmpeg.name() == "ffmpeg"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        gone, _ = psutil.wait_procs([ffmpeg], timeout=5)
        if not gone:
            assert ffmpeg.status() == psutil.STATUS_ZOMBIE  # dead, waiting for init
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        if sleeper:
            try:
                os.kill(sleeper, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- pieces --------------------------------------------------------------------------


def test_ffmpeg_command():
    cmd = ffmpeg_command()
    assert cmd[0] == "ffmpeg" and cmd[-1] == "pipe:1"
    assert cmd[cmd.index("-i") + 1] == "pipe:0"
    joined = " ".join(cmd)
    for part in (
        "-f wav",
        "-acodec pcm_f32le",
        "aformat=channel_layouts=mono|stereo",
        f"-ar {SAMPLE_RATE}",
        "-nostdin",
    ):
        assert part in joined
    assert "-ac" not in cmd  # the mix to mono is ours (stages.decode.downmix)
    assert "quiet" not in cmd
    assert cmd.index("-nostdin") < cmd.index("-i")  # global options before the input
    assert ffmpeg_command("file:/tmp/x.mp4")[cmd.index("-i") + 1] == "file:/tmp/x.mp4"


def box(kind: bytes, payload: bytes = b"") -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


FTYP = box(b"ftyp", b"M4A \x00\x00\x02\x00isomiso2")


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "stream"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "stream"),
        (FTYP + box(b"moov", b"x" * 100) + box(b"mdat", b"y" * 100), "stream"),
        (
            FTYP + box(b"free", b"z" * 50) + box(b"mdat", b"y" * 100) + box(b"moov"),
            "spool",
        ),
        (FTYP + box(b"wide") + struct.pack(">I", 0) + b"mdat", "spool"),
        # 64-bit size on a skipped box
        (
            FTYP
            + struct.pack(">I", 1)
            + b"free"
            + struct.pack(">Q", 24)
            + b"p" * 8
            + box(b"moov"),
            "stream",
        ),
        (
            FTYP + struct.pack(">I", 4) + b"junk",
            "stream",
        ),  # malformed size: ffmpeg reports
        (box(b"mdat", b"y" * 10) + box(b"moov"), "spool"),  # old QuickTime without ftyp
    ],
)
def test_sniff_layout(head, expected):
    assert sniff_layout(head) == expected
    # Whatever the blocks' sizes, a prefix gives no answer or the same one.
    for k in range(len(head)):
        assert sniff_layout(head[:k]) in (None, expected)


def test_sniff_layout_needs_more_and_eof():
    assert sniff_layout(b"") is None
    assert sniff_layout(b"\x00\x00\x00") is None
    assert sniff_layout(b"\x00\x00\x00", eof=True) == "stream"
    assert sniff_layout(FTYP) is None
    assert sniff_layout(FTYP, eof=True) == "stream"
    big_free = FTYP + struct.pack(">I", 2 * SNIFF_LIMIT) + b"free"
    assert sniff_layout(big_free) is None
    assert (
        sniff_layout(big_free + bytes(SNIFF_LIMIT)) == "spool"
    )  # memory stays bounded


def test_no_room_to_spool_is_the_machines_fault_not_the_inputs(tmp_path, speech_wav, monkeypatch):
    """A full disk while spooling an MP4 whose index comes last: one line, no traceback
    (a UserError), but a ResourceError: a server answers 503 (try later), not 400 (your
    audio is bad), and the spool file is gone."""
    import errno

    import stages.decode as decode_mod
    from pipeline.errors import ResourceError

    data = media.convert(speech_wav, tmp_path / "a.m4a", "-c:a", "aac").read_bytes()
    monkeypatch.setattr(decode_mod.tempfile, "tempdir", str(tmp_path / "spool"))
    (tmp_path / "spool").mkdir()
    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / "spool")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(decode_mod.os, "write", full)
    with pytest.raises(ResourceError) as e:
        list(decode_stream([data], name="a.m4a"))
    assert str(e.value) == "cannot decode a.m4a: cannot spool to a temporary file: No space left on device"
    assert not any((tmp_path / "spool").iterdir())
    assert not ffmpeg_children()


def test_ffmpeg_killed_is_said_so():
    """ffmpeg killed mid-decode (the OOM killer): the error says so, not ffmpeg's last
    info line ("Guessed Channel Layout ..." was given as the reason), and it is the
    machine's fault (ResourceError), not the input's."""
    from pipeline.errors import ResourceError

    gen = decode_stream(endless_wav(), name="long.wav", block_samples=8000)
    next(gen)
    (ffmpeg,) = ffmpeg_children()
    ffmpeg.kill()
    with pytest.raises(ResourceError) as e:
        for _ in gen:
            pass
    assert str(e.value) == "cannot decode long.wav: ffmpeg was killed by SIGKILL (out of memory?)"
    assert not ffmpeg_children()


# ------------------------------------------------------------------ the media's timeline


def _first_sound_s(x: np.ndarray) -> float:
    return int(np.argmax(np.abs(x) > 0.05)) / SAMPLE_RATE


def test_audio_that_starts_after_the_video_keeps_its_place(tmp_path):
    """Sample 0 is the media's time 0: in a video whose audio starts 2 s in, a tone at 1 s
    of the audio is at 3 s (subtitles line up with the picture). The samples used to be
    written back to back: every time came out 2 s early."""
    x = np.zeros(4 * SAMPLE_RATE, np.float32)
    x[SAMPLE_RATE : 2 * SAMPLE_RATE] = media.tone(TONE_HZ, 1.0)
    wav = media.write_wav(tmp_path / "a.wav", x)
    video = tmp_path / "late.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=d=6:s=64x48:r=5",
                    "-itsoffset", "2", "-i", str(wav), "-map", "0:v", "-map", "1:a",
                    "-c:v", "mpeg4", "-c:a", "flac", str(video)], check=True)  # fmt: skip
    for y in (decode_file(video), np.concatenate(list(decode_stream(iter([video.read_bytes()]))))):
        assert _first_sound_s(y) == pytest.approx(3.0, abs=0.03)
        assert len(y) / SAMPLE_RATE == pytest.approx(6.0, abs=0.1)


def test_a_gap_in_the_audios_timestamps_is_silence_in_its_place(tmp_path):
    x = np.zeros(6 * SAMPLE_RATE, np.float32)
    x[4 * SAMPLE_RATE : 5 * SAMPLE_RATE] = media.tone(TONE_HZ, 1.0)
    wav = media.write_wav(tmp_path / "a.wav", x)
    gap = media.convert(wav, tmp_path / "gap.mkv", "-af", "asetpts='PTS+gt(T,2)*3/TB'", "-c:a", "flac")
    y = decode_file(gap)
    assert _first_sound_s(y) == pytest.approx(7.0, abs=0.05)  # 4 s of audio + the 3 s gap
    # Without a break in the timestamps, not a sample changes (every test set and upload).
    assert np.array_equal(decode_file(wav), media.read_audio(wav))


def test_a_spool_file_is_never_seen_in_the_temporary_folder(tmp_path, monkeypatch):
    """Unlinked as soon as it is made: a Ctrl-C while spooling (the stage ends before its
    thread unwinds) left /tmp/decode-*.mp4 behind, as big as the input."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    wav = media.write_wav(tmp_path / "long.wav", media.tone(TONE_HZ, 60.0), 16000)
    data = media.convert(wav, tmp_path / "a.m4a", "-c:a", "aac", "-b:a", "32k").read_bytes()
    assert data.find(b"mdat") < data.find(b"moov")  # moov at the end: spooled
    seen = []

    def blocks():
        for i in range(0, len(data), 50_000):
            seen.append(sorted(p.name for p in tmp_path.glob("decode-*")))  # while spooling
            yield data[i : i + 50_000]

    y = np.concatenate(list(decode_stream(blocks())))
    assert len(y) / SAMPLE_RATE == pytest.approx(60.0, abs=0.1)
    assert len(seen) > 3 and not any(seen)


def test_a_file_ffmpeg_could_decode_only_in_part_is_said_so_once(tmp_path, caplog):
    """An MP4 cut short (faststart: it streams, and ffmpeg stops at "partial file") gave
    part of its audio with no word; a FLAC cut short gets one warning, not two."""
    caplog.set_level(logging.INFO, logger="stages.decode")
    wav = media.write_wav(tmp_path / "a.wav", media.tone(TONE_HZ, 20.0))
    m4a = media.convert(wav, tmp_path / "a.m4a", "-c:a", "aac", "-movflags", "+faststart").read_bytes()
    y = np.concatenate(list(decode_stream(iter([m4a[: len(m4a) * 6 // 10]]))))
    assert 5 < len(y) / SAMPLE_RATE < 18
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "ffmpeg reported an error after 0:00:" in warned[0], warned
    assert warned[0].endswith("part of it may be missing"), warned
    caplog.clear()
    flac = media.convert(wav, tmp_path / "a.flac").read_bytes()
    list(decode_stream(iter([flac[: len(flac) // 2]])))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "looks cut short" in warned[0], warned
    caplog.clear()
    list(decode_stream(iter([m4a])))  # whole: nothing to say
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
