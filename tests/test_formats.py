"""Output formats, checked by parsing them back with independent libraries (srt, webvtt-py)."""

import datetime
import html
import io
import json
import random

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


def test_word_cues_read_as_the_segment_text_does():
    # Whisper's words carry their leading space, or none where a word goes on without one
    # ("o" + "'clock", "9" + ".30", every word of Chinese): a cue joins them as written.
    en = (Word(0, 0.3, " At", 0.9), Word(0.3, 0.6, " o", 0.9), Word(0.6, 1, "'clock,", 0.9),
          Word(1, 1.3, " 9", 0.9), Word(1.3, 1.6, ".30", 0.9))  # fmt: skip
    zh = tuple(Word(2 + i * 0.2, 2.2 + i * 0.2, ch, 0.9) for i, ch in enumerate("你好世界"))
    t = make((Segment(0, 1.6, " At o'clock, 9.30", words=en), Segment(2, 2.8, "你好世界", words=zh)), duration=3.0)
    cues = list(srt.parse(format_transcript(t, "srt", max_line_chars=42)))
    assert [c.content for c in cues] == ["At o'clock, 9.30", "你好世界"]
    # Lengths count the text as shown: "At o'clock," is 11 characters.
    cues = list(srt.parse(format_transcript(t, "srt", max_line_chars=11)))
    assert [c.content for c in cues] == ["At o'clock,", "9.30", "你好世界"]
    assert [c.content for c in srt.parse(format_transcript(t, "srt", max_line_chars=2))] == [
        "At", "o'clock,", "9.30", "你好", "世界"]  # fmt: skip
    # Chinese with a Latin word in it (ordinary: "用 Python"): still cut between characters.
    text = "我们今天用 Python学习编程语言和数据分析的基本方法"
    pieces = ["我", "们", "今", "天", "用", " Python", "学", "习", "编", "程", "语", "言", "和", "数", "据", "分",
              "析", "的", "基", "本", "方", "法"]  # fmt: skip
    zh = tuple(Word(i * 0.2, (i + 1) * 0.2, p, 0.9) for i, p in enumerate(pieces))
    t = make((Segment(0, len(pieces) * 0.2, text, words=zh),), duration=5.0)
    cues = [c.content for c in srt.parse(format_transcript(t, "srt", max_line_chars=10))]
    assert "".join(cues) == text.replace(" ", "") and all(len(c) <= 10 for c in cues), cues


def test_a_cue_with_no_duration_is_shown_and_never_overlaps():
    # A word DTW gave no frames, at the same instant as its neighbours: it joins the cue
    # before it (a 1 ms cue of its own overlapped the next and flashed by unseen).
    words = (Word(10.0, 11.24, " of July, at", 0.9), Word(11.24, 11.24, " the", 0.9))
    t = make((Segment(10.0, 11.24, " of July, at the", words=words),
              Segment(11.24, 12.0, " fourth", words=(Word(11.24, 11.46, " fourth", 0.9),))), duration=12.0)  # fmt: skip
    cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content)
            for c in srt.parse(format_transcript(t, "srt", max_line_chars=10))]  # fmt: skip
    assert cues == [(10.0, 11.24, "of July, at the"), (11.24, 11.46, "fourth")]
    # A segment clamped to its window's end: shown in the free time after it (up to 1 s),
    # else before it.
    segs = (Segment(20.0, 23.0, " before"), Segment(24.0, 24.0, " tail words."), Segment(24.5, 26.0, " next"))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content)
            for c in srt.parse(format_transcript(make(segs, duration=26.0), "srt"))] == [
        (20.0, 23.0, "before"), (24.0, 24.5, "tail words."), (24.5, 26.0, "next")]  # fmt: skip
    segs = (Segment(20.0, 23.5, " before"), Segment(24.0, 24.0, " tail words."), Segment(24.0, 26.0, " next"))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content)
            for c in srt.parse(format_transcript(make(segs, duration=26.0), "srt"))] == [
        (20.0, 23.5, "before"), (23.5, 24.0, "tail words."), (24.0, 26.0, "next")]  # fmt: skip
    segs = (Segment(0.0, 0.0, " first"), Segment(0.0, 2.0, " second"))
    assert [c.content for c in srt.parse(format_transcript(make(segs, duration=2.0), "srt"))] == ["first second"]


def test_cues_are_ordered_never_overlap_and_keep_every_word():
    rng = random.Random(8)
    for trial in range(300):
        segs, t0 = [], 0.0
        for i in range(rng.randint(1, 6)):
            words, w0 = [], t0
            for j in range(rng.randint(1, 5)):
                dur = rng.choice([0.0, 0.0, 0.0005, 0.001, 0.2, 0.7])
                words.append(Word(round(w0, 3), round(w0 + dur, 3), f" w{i}_{j}", 0.9))
                w0 += dur + rng.choice([0.0, 0.0, 0.3])
            end = max(words[-1].end, round(t0 + rng.choice([0.0, 0.5]), 3))
            segs.append(Segment(round(t0, 3), end, "".join(w.word for w in words), words=tuple(words)))
            t0 = end + rng.choice([0.0, 0.0, 1.5])
        t = make(tuple(segs), duration=t0 + 1)
        every = [w.word.strip() for s in segs for w in s.words]
        for mlc in (None, 1, 12):
            for fmt in ("srt", "vtt"):
                out = format_transcript(t, fmt, max_line_chars=mlc)
                if fmt == "srt":
                    cues = [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in srt.parse(out)]
                else:
                    cues = [(c.start_time.in_milliseconds() / 1000, c.end_time.in_milliseconds() / 1000,
                             html.unescape(c.raw_text)) for c in vtt_cues(out)]  # fmt: skip
                assert all(a < b for a, b, _ in cues), (trial, mlc, fmt, cues)
                assert all(x[1] <= y[0] for x, y in zip(cues, cues[1:])), (trial, mlc, fmt, cues)
                assert " ".join(c for _, _, c in cues).split() == every, (trial, mlc, fmt)


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
