"""MAX_AUDIO_S (issue 10): audio whose header declares more than the cap is refused before
decoding; audio that turns out longer is stopped when it passes the cap."""

from __future__ import annotations

import struct

import pytest

from pipeline.config import DEFAULT_MAX_AUDIO_S, PipelineConfig
from stages.decode import DecodeError, declared_seconds, decode_stream
from tests import media


def wav_header(rate: int, seconds: float, data: bytes = b"") -> bytes:
    """A 16-bit mono WAV header declaring ``seconds`` at ``rate`` Hz, then ``data``."""
    size = int(rate * seconds) * 2
    return (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", size) + data)


def test_declared_duration_of_wav_and_flac(tmp_path):
    assert declared_seconds(wav_header(3, 3 * 3600)) == 3 * 3600  # 64 kB that "is" 3 hours
    assert declared_seconds(wav_header(16000, 2.5)) == 2.5
    streamed = bytearray(wav_header(16000, 1))
    for placeholder in (0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000):  # "size unknown", as streaming writers put it
        streamed[40:44] = struct.pack("<I", placeholder)
        assert declared_seconds(streamed) is None, hex(placeholder)
    streamed[40:44] = struct.pack("<I", 0x7FFFEFFE)  # just under: a real size, 18:38:29 at 32 kB/s
    assert declared_seconds(streamed) == pytest.approx(0x7FFFEFFE / 32000)
    flac = media.convert(media.write_wav(tmp_path / "a.wav", media.tone(440, 2.0)), tmp_path / "a.flac")
    assert declared_seconds(flac.read_bytes()[:64]) == pytest.approx(2.0)
    assert declared_seconds(b"ID3\x04\x00" + bytes(60)) is None  # mp3: no declared length


def test_a_header_declaring_too_much_is_refused_before_decoding():
    three_hours = wav_header(3, 3 * 3600, bytes(64))

    def blocks():
        yield three_hours
        raise AssertionError("read past the header: it should have been refused")

    with pytest.raises(DecodeError) as e:
        list(decode_stream(blocks(), name="tiny.wav", max_seconds=3600))
    msg = str(e.value)
    assert msg.startswith("tiny.wav: ") and "3:00:00" in msg and "MAX_AUDIO_S" in msg, msg


def test_audio_longer_than_declared_is_stopped_at_the_cap(tmp_path):
    ogg = media.convert(media.write_wav(tmp_path / "n.wav", media.noise(30.0)), tmp_path / "n.ogg")
    got = 0
    with pytest.raises(DecodeError) as e:
        for pcm in decode_stream([ogg.read_bytes()], name="n.ogg", block_samples=16000, max_seconds=10):
            got += len(pcm)
    assert got <= 10 * 16000
    assert str(e.value).startswith("n.ogg: longer than the limit of 0:00:10 (MAX_AUDIO_S)")


def test_max_audio_s_from_the_environment(monkeypatch):
    monkeypatch.delenv("MAX_AUDIO_S", raising=False)
    assert PipelineConfig(model="m").max_audio_s == DEFAULT_MAX_AUDIO_S == 12 * 3600
    monkeypatch.setenv("MAX_AUDIO_S", "600")
    assert PipelineConfig(model="m").max_audio_s == 600
    monkeypatch.setenv("MAX_AUDIO_S", "lots")
    with pytest.raises(ValueError, match="MAX_AUDIO_S"):
        PipelineConfig(model="m")


def test_a_file_cut_short_of_its_header_is_told(caplog):
    """ffmpeg decodes what is there without a word: a WAV whose header declares 10 s but
    holds 2 s (an upload that broke off) is decoded, with a warning naming the input."""
    import logging

    import numpy as np

    caplog.set_level(logging.INFO, logger="stages.decode")
    tone = (0.3 * np.sin(np.arange(32000) * 0.1) * 32767).astype("<i2").tobytes()  # 2 s at 16 kHz
    pcm = np.concatenate(list(decode_stream([wav_header(16000, 10, tone)], name="cut.wav")))
    assert len(pcm) == 32000
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["cut.wav: its header declares 0:00:10 of audio, but the file holds only 0:00:02: "
                      "it looks cut short"], warned
    caplog.clear()
    list(decode_stream([wav_header(16000, 2, tone)], name="whole.wav"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
