"""Output formats, checked by parsing them back with independent libraries (srt, webvtt-py)."""

import datetime
import html
import io
import json

import pytest
import srt
import webvtt

from pipeline.formats import FORMATS, Transcript, format_transcript
from pipeline.stitch import transcript_text
from pipeline.types import Segment

SEGMENTS = (
    Segment(0.0, 2.5, " Hello world."),
    Segment(2.5, 4.2004, " Ça va? Très bien — merci."),
    Segment(61.0, 3725.125, " An hour later, <b>tags</b> & such."),
)


def make(segments=SEGMENTS, duration=3730.0) -> Transcript:
    return Transcript(
        text=transcript_text(segments),
        language="en",
        duration=duration,
        model="tone",
        segments=segments,
        timings={"wall_s": 1.5},
    )


def srt_cues(text: str):
    return list(srt.parse(text))


def vtt_cues(text: str):
    return webvtt.from_buffer(io.StringIO(text), strict=True).captions


def seconds(td: datetime.timedelta) -> float:
    return td.total_seconds()


def test_formats_tuple():
    assert FORMATS == ("text", "json", "srt", "vtt")
    with pytest.raises(ValueError, match="format"):
        format_transcript(make(), "docx")


def test_text():
    out = format_transcript(make(), "text")
    assert (
        out
        == "Hello world. Ça va? Très bien — merci. An hour later, <b>tags</b> & such.\n"
    )


def test_json_shape_rounding_and_utf8():
    t = make(segments=(Segment(0.12345, 1.98765, " Très bien "),), duration=2.00049)
    out = format_transcript(t, "json")
    assert "Très" in out and "\\u" not in out  # UTF-8, not escaped
    assert out.endswith("}\n") and "\n  " in out  # indented
    d = json.loads(out)
    assert list(d) == ["text", "language", "duration", "model", "segments", "timings"]
    assert d["segments"] == [{"start": 0.123, "end": 1.988, "text": "Très bien"}]
    assert d["duration"] == 2.0
    assert (d["text"], d["language"], d["model"], d["timings"]) == (
        "Très bien",
        "en",
        "tone",
        {"wall_s": 1.5},
    )
    assert make().to_dict() == json.loads(format_transcript(make(), "json"))


def test_transcript_stores_segments_as_tuple():
    t = Transcript(
        text="", language=None, duration=0.0, model="m", segments=list(SEGMENTS)
    )
    assert isinstance(t.segments, tuple) and t.timings == {}


def test_srt_round_trip():
    out = format_transcript(make(), "srt")
    assert out.startswith("1\n00:00:00,000 --> 00:00:02,500\nHello world.\n\n")
    assert "01:02:05,125" in out
    cues = srt_cues(out)
    assert [c.index for c in cues] == [1, 2, 3]
    assert [c.content for c in cues] == [s.text.strip() for s in SEGMENTS]
    for c, s in zip(cues, SEGMENTS):
        assert seconds(c.start) == pytest.approx(s.start, abs=5e-4)
        assert seconds(c.end) == pytest.approx(s.end, abs=5e-4)


def test_vtt_round_trip():
    out = format_transcript(make(), "vtt")
    assert out.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello world.\n\n")
    cues = vtt_cues(out)
    assert [html.unescape(c.raw_text) for c in cues] == [
        s.text.strip() for s in SEGMENTS
    ]
    # "<b>" was escaped, so it is text, not a cue tag webvtt-py would strip.
    assert "<b>tags</b>" in html.unescape(cues[2].text)
    for c, s in zip(cues, SEGMENTS):
        assert c.start_time.in_milliseconds() / 1000 == pytest.approx(s.start, abs=5e-4)
        assert c.end_time.in_milliseconds() / 1000 == pytest.approx(s.end, abs=5e-4)


def test_vtt_read_from_file(tmp_path):
    path = tmp_path / "out.vtt"
    path.write_text(format_transcript(make(), "vtt"), encoding="utf-8")
    assert len(webvtt.read(str(path)).captions) == 3


@pytest.mark.parametrize("hours", [9, 10, 99, 100, 123])
def test_long_audio_hours(hours):
    start = hours * 3600 + 59 * 60 + 59.999
    segs = (Segment(start - 5.0, start, " late"), Segment(start, start + 1.0, " later"))
    t = make(segments=segs, duration=start + 2)
    s_cues = srt_cues(format_transcript(t, "srt"))
    assert [seconds(c.start) for c in s_cues] == pytest.approx(
        [start - 5.0, start], abs=5e-4
    )
    assert seconds(s_cues[1].end) == pytest.approx(start + 1.0, abs=5e-4)
    v_out = format_transcript(t, "vtt")
    assert f"{hours:02d}:59:59.999 --> " in v_out
    v_cues = vtt_cues(v_out)
    assert [c.text for c in v_cues] == ["late", "later"]
    got = v_cues[1].start_time
    assert (got.hours, got.minutes, got.seconds, got.milliseconds) == (
        hours,
        59,
        59,
        999,
    )


def test_empty_transcript():
    t = make(segments=(), duration=0.0)
    assert format_transcript(t, "text") == "\n"
    assert format_transcript(t, "srt") == ""
    assert srt_cues(format_transcript(t, "srt")) == []
    assert vtt_cues(format_transcript(t, "vtt")) == []
    assert json.loads(format_transcript(t, "json"))["segments"] == []


def test_awkward_text_does_not_break_cues():
    segs = (
        Segment(0.0, 1.0, " first line\n\n\nsecond line after blanks"),
        Segment(
            1.0, 2.0, " 12\n00:00:05,000 --> 00:00:06,000"
        ),  # looks like a cue header
        Segment(2.0, 2.0, " zero length"),
        Segment(2.0, 3.0, "   \n  "),  # nothing to show: no cue
        Segment(3.0, 4.0, " last"),
    )
    t = make(segments=segs, duration=4.0)
    expected = [
        "first line\nsecond line after blanks",
        "12\n00:00:05,000 -> 00:00:06,000",
        "zero length",
        "last",
    ]
    s_cues = srt_cues(format_transcript(t, "srt"))
    assert [c.content for c in s_cues] == expected
    assert [c.index for c in s_cues] == [1, 2, 3, 4]
    assert [seconds(c.start) for c in s_cues] == [0.0, 1.0, 2.0, 3.0]
    v_cues = vtt_cues(format_transcript(t, "vtt"))
    assert [html.unescape(c.raw_text) for c in v_cues] == expected
    assert all(
        c.end_time.in_milliseconds() > c.start_time.in_milliseconds() for c in v_cues
    )


# ---------------------------------------------------------------- word cues, verbose_json (issue 11)

from pipeline.types import TimedWindow, WindowResult, Word  # noqa: E402

WORDED = (
    Segment(
        0.0,
        4.0,
        " And so my fellow Americans,",
        words=(
            Word(0.0, 0.5, " And", 0.9),
            Word(0.5, 0.8, " so", 0.8),
            Word(0.8, 1.2, " my", 0.95),
            Word(1.2, 2.0, " fellow", 0.7),
            Word(2.0, 4.0, " Americans,", 0.6),
        ),
    ),
    Segment(5.0, 6.0, " Supercalifragilistic", words=(Word(5.0, 6.0, " Supercalifragilistic", 0.5),)),
    Segment(7.0, 8.0, " no words here"),
)


def test_word_cues_hold_whole_words_up_to_the_limit_timed_by_their_words():
    t = make(WORDED, duration=8.0)
    cues = list(srt.parse(format_transcript(t, "srt", max_line_chars=12)))
    assert [c.content for c in cues] == ["And so my", "fellow", "Americans,", "Supercalifragilistic", "no words here"]
    assert all(len(c.content) <= 12 for c in cues[:3])
    secs = [(c.start.total_seconds(), c.end.total_seconds()) for c in cues]
    assert secs == [(0.0, 1.2), (1.2, 2.0), (2.0, 4.0), (5.0, 6.0), (7.0, 8.0)]
    vtt = list(webvtt.read_buffer(io.StringIO(format_transcript(t, "vtt", max_line_chars=12))))
    assert [c.text for c in vtt] == [c.content for c in cues]
    # Without the limit (or without words) a segment stays one cue.
    assert [c.content for c in srt.parse(format_transcript(t, "srt"))] == [
        "And so my fellow Americans,", "Supercalifragilistic", "no words here"]  # fmt: skip
    with pytest.raises(ValueError):
        format_transcript(t, "srt", max_line_chars=0)


def test_verbose_json_in_openais_shape():
    from pipeline.formats import verbose_json

    t = make(WORDED, duration=8.0)
    windows = [
        TimedWindow(0, 0.0, 4.5, WindowResult((), "en", 5, avg_logprob=-0.2, no_speech_prob=0.01, compression_ratio=1.1)),
        TimedWindow(1, 4.5, 3.5, WindowResult((), "en", 5, temperature=0.2)),
    ]
    v = verbose_json(t, "transcribe", windows, words=True)
    assert (v["task"], v["language"], v["duration"], v["text"]) == ("transcribe", "english", 8.0, t.text)
    s0, s1, s2 = v["segments"]
    assert s0 == {"id": 0, "seek": 0, "start": 0.0, "end": 4.0, "text": " And so my fellow Americans,", "tokens": [],
                  "temperature": 0.0, "avg_logprob": -0.2, "compression_ratio": 1.1, "no_speech_prob": 0.01}  # fmt: skip
    assert (s1["id"], s1["seek"], s1["temperature"], s1["avg_logprob"]) == (1, 450, 0.2, 0.0)
    assert s2["seek"] == 450
    assert v["words"][0] == {"word": "And", "start": 0.0, "end": 0.5, "probability": 0.9}
    assert len(v["words"]) == 6
    only_words = verbose_json(t, "translate", windows, words=True, segments=False)
    assert "segments" not in only_words and only_words["task"] == "translate"
    assert "words" not in verbose_json(t)
