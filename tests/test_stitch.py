"""Stitching, guarded by a recogniser whose right answer is known (tests/tone_backend.py).

Every test here runs without processes: audio -> iter_windows -> ToneBackend in batches
-> TimedWindows (shuffled, as they may arrive) -> stitch, then words are counted against
the truth: lost, doubled, misplaced (> 0.1 s), out of order must all be 0.
"""

import functools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.constants import DEFAULT_OVERLAP_S, PCM_DTYPE, SAMPLE_RATE
from pipeline.stitch import majority_language, stitch, transcript_text
from pipeline.types import DecodeOptions, Segment, TimedWindow, WindowResult
from stages.chunk import WindowPlan, iter_windows, window_starts
from tests.tone_backend import ToneBackend, make_tone_speech, score, tone_word

CLEAN = dict(lost=0, doubled=0, misplaced=0, out_of_order=0)


@functools.lru_cache(maxsize=None)
def speech(seed: int, n_words: int = 900, pause_prob: float = 0.12):
    """About 10 minutes of tone speech (900 words) and its truth."""
    return make_tone_speech(n_words, seed, pause_prob=pause_prob)


def timed_windows(audio, overlap_s, grouping, seed=0, batch=8, block=7919):
    """The pure pipeline up to the stitcher: TimedWindows in a shuffled order."""
    plan = WindowPlan.from_seconds(overlap_s)
    backend = ToneBackend(model=f"tone:{grouping}", device=None, dtype=None)
    blocks = (audio[i : i + block] for i in range(0, audio.shape[0], block))
    out, pending = [], []

    def flush():
        results = backend.transcribe(
            [backend.prepare(w.audio) for w in pending], DecodeOptions()
        )
        for w, r in zip(pending, results):
            out.append(
                TimedWindow(w.index, w.start / SAMPLE_RATE, w.valid / SAMPLE_RATE, r)
            )
        pending.clear()

    for w in iter_windows(blocks, plan):
        pending.append(w)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    random.Random(seed).shuffle(out)
    return out


def run(audio, overlap_s, grouping, seed=0):
    windows = timed_windows(audio, overlap_s, grouping, seed)
    return (
        stitch(windows, overlap=overlap_s, duration=audio.shape[0] / SAMPLE_RATE),
        windows,
    )


def check(segments, truth, grouping, duration):
    details = []
    result = score(segments, truth, grouping, details=details)
    assert result == CLEAN, f"{result}: " + "; ".join(details[:8])
    assert all(0 <= s.start <= s.end <= duration for s in segments)
    assert all(s.text.strip() for s in segments)


@pytest.mark.parametrize("grouping", ["word", "phrase"])
@pytest.mark.parametrize("overlap_s", sorted({0.0, 2.0, DEFAULT_OVERLAP_S, 5.0, 3.33}))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ten_minutes_every_word_once(seed, overlap_s, grouping):
    audio, truth = speech(seed)
    assert audio.shape[0] / SAMPLE_RATE > 550
    segments, _ = run(audio, overlap_s, grouping, seed)
    check(segments, truth, grouping, audio.shape[0] / SAMPLE_RATE)


@pytest.mark.parametrize("overlap_s", [1.0, 4.0, 12.0])
def test_long_phrases_cross_every_overlap(overlap_s):
    """Rare pauses: phrases longer than the overlap, so most boundaries need word alignment."""
    audio, truth = speech(5, n_words=400, pause_prob=0.02)
    segments, _ = run(audio, overlap_s, "phrase")
    check(segments, truth, "phrase", audio.shape[0] / SAMPLE_RATE)


def test_score_catches_loss_doubling_and_misplacement():
    """The guard can fail: naive stitching is caught."""
    audio, truth = speech(0)
    windows = sorted(
        timed_windows(audio, DEFAULT_OVERLAP_S, "word"), key=lambda w: w.index
    )
    every = [
        Segment(w.start + s.start, w.start + s.end, s.text)
        for w in windows
        for s in w.result.segments
    ]
    assert score(every, truth)["doubled"] > 0  # overlaps transcribed twice
    segments = stitch(windows, DEFAULT_OVERLAP_S, audio.shape[0] / SAMPLE_RATE)
    assert score(segments[:10] + segments[12:], truth)["lost"] == 2
    shifted = [Segment(s.start + 0.3, s.end + 0.3, s.text) for s in segments]
    assert score(shifted, truth)["misplaced"] == len(truth)


# -- crafted audio: words where the edges are ---------------------------------------------


def place(words, total_s):
    """Audio with word i at [start, end) s for (i, start, end) in words; returns truth too."""
    audio = np.zeros(round(total_s * SAMPLE_RATE), dtype=PCM_DTYPE)
    truth = []
    for i, start, end in words:
        a, b = round(start * SAMPLE_RATE), round(end * SAMPLE_RATE)
        audio[a:b] = tone_word(i, b - a)
        truth.append((f"w{i}", a / SAMPLE_RATE, b / SAMPLE_RATE))
    return audio, truth


@pytest.mark.parametrize("grouping", ["word", "phrase"])
def test_words_on_window_edges_and_boundaries(grouping):
    # Default overlap 4 s: window 1 starts at 26 s, window 0 ends at 30 s, the middle of
    # the overlap (the ownership boundary) is 28 s. Window 2 starts at 52 s.
    words = [
        (1, 25.0, 25.5),
        (2, 25.85, 26.3),  # across window 1's start (cut there)
        (3, 27.75, 28.25),  # centred on the ownership boundary
        (4, 29.7, 30.3),  # across window 0's end: open_end in window 0
        (5, 51.6, 52.3),  # across window 2's start, on window 1's side of the seam
        (6, 55.97, 56.4),  # window 1 hears only its first 30 ms: too little to be heard
    ]
    audio, truth = place(words, 60.0)
    segments, windows = run(audio, DEFAULT_OVERLAP_S, grouping)
    w0 = next(w for w in windows if w.index == 0)
    assert w0.result.segments[-1].open_end  # the case is really exercised
    check(segments, truth, grouping, 60.0)


@pytest.mark.parametrize("grouping", ["word", "phrase"])
def test_no_overlap_word_cut_in_two(grouping):
    """Overlap 0: a word cut at 30 s is heard as two halves; they become one word."""
    words = [(7, 29.0, 29.4), (8, 29.75, 30.25), (9, 30.5, 30.9), (10, 59.97, 60.3)]
    audio, truth = place(words, 61.0)
    segments, windows = run(audio, 0.0, grouping)
    halves = [s for w in windows for s in w.result.segments if "w8" in s.text]
    assert len(halves) == 2
    check(segments, truth, grouping, 61.0)


def test_segment_straddling_the_whole_overlap():
    """One phrase from 23 s to 33 s covers the overlap: no common pause, words aligned."""
    t, words = 23.0, []
    for i in range(14):
        words.append((i % 40, t, t + 0.5))
        t += 0.7
    audio, truth = place(words, 40.0)
    segments, windows = run(audio, DEFAULT_OVERLAP_S, "phrase")
    assert len(segments) == 1 and segments[0].text.split() == [w[0] for w in truth]
    check(segments, truth, "phrase", 40.0)


@pytest.mark.parametrize("grouping", ["word", "phrase"])
def test_last_window_short(grouping):
    # 26 s step + 4 s overlap + 0.8 s: the last window has 4.8 s of audio.
    words = [(11, 27.0, 27.4), (12, 28.9, 29.3), (13, 29.9, 30.3), (14, 30.4, 30.75)]
    audio, truth = place(words, 30.8)
    segments, windows = run(audio, DEFAULT_OVERLAP_S, grouping)
    assert sorted(w.valid for w in windows) == pytest.approx([4.8, 30.0])
    check(segments, truth, grouping, 30.8)


# -- crafted window results ---------------------------------------------------------------


def tw(index, start, segments, valid=30.0, language="en"):
    segs = tuple(Segment(*s) for s in segments)
    return TimedWindow(
        index=index, start=start, valid=valid, result=WindowResult(segs, language)
    )


def test_overlapping_kept_segments_with_repeated_words():
    windows = [
        tw(
            0,
            0.0,
            [
                (1.0, 20.0, " Once upon a time."),
                (21.0, 30.0, " The cat sat on the", True),
            ],
        ),
        tw(
            1,
            26.0,
            [(0.0, 6.0, " on the mat, today."), (6.5, 9.0, " The end.")],
            valid=12.0,
        ),
    ]
    segments = stitch(windows[::-1], overlap=4.0, duration=38.0)
    assert (
        transcript_text(segments)
        == "Once upon a time. The cat sat on the mat, today. The end."
    )
    assert [(s.start, s.end) for s in segments] == [
        (1.0, 20.0),
        (21.0, 32.0),
        (32.5, 35.0),
    ]


def test_half_heard_words_at_both_edges_are_skipped():
    windows = [
        tw(0, 0.0, [(24.0, 30.0, " one two three four five si", True)]),
        tw(1, 26.0, [(0.0, 8.0, " ree four five six seven")]),
    ]
    segments = stitch(windows, overlap=4.0, duration=56.0)
    assert transcript_text(segments) == "one two three four five six seven"
    assert (segments[0].start, segments[0].end) == (24.0, 34.0)


def test_windows_that_disagree_stay_ordered():
    """No common pause and no common words: the centre rule, then clamping."""
    windows = [
        tw(0, 0.0, [(24.0, 30.0, " alpha beta", True)]),
        tw(1, 26.0, [(0.0, 7.0, " gamma delta")]),
    ]
    segments = stitch(windows, overlap=4.0, duration=56.0)
    assert transcript_text(segments) == "alpha beta gamma delta"
    assert segments[0].end <= segments[1].start


def test_empty_windows_and_language():
    windows = [
        tw(0, 0.0, [], language="cy"),  # silence: its language is a guess
        tw(1, 26.0, [(1.0, 2.0, "   ")], language="cy"),  # no text either
        tw(2, 52.0, [(3.0, 5.0, " hello there")]),
        tw(3, 78.0, [], language="fr"),
        tw(4, 104.0, [(0.5, 1.5, " again")], valid=10.0),
    ]
    segments = stitch(windows, overlap=4.0, duration=114.0)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (55.0, 57.0, " hello there"),
        (104.5, 105.5, " again"),
    ]
    assert majority_language(windows) == "en"
    assert majority_language([windows[0], windows[3]]) is None
    assert stitch([], overlap=4.0, duration=0.0) == []


def test_majority_language_weighs_text():
    windows = [
        tw(0, 0.0, [(0, 2, " bonjour")], language="fr"),
        tw(1, 26.0, [(0, 9, " a much longer stretch of english")], language="en"),
        tw(2, 52.0, [(0, 2, " salut")], language="fr"),
    ]
    assert majority_language(windows) == "en"


def test_single_window_clamped_to_duration():
    windows = [tw(0, 0.0, [(0.0, 2.0, " hi"), (2.5, 30.0, " there", True)], valid=7.5)]
    segments = stitch(windows, overlap=4.0, duration=7.5)
    assert [(s.start, s.end) for s in segments] == [(0.0, 2.0), (2.5, 7.5)]
    assert transcript_text(segments) == "hi there"


def test_duplicate_window_index_is_an_error():
    with pytest.raises(ValueError, match="index"):
        stitch([tw(0, 0.0, []), tw(0, 26.0, [])], overlap=4.0, duration=40.0)


_texts = st.sampled_from([" a", " b c", " c", "", " d e f", "  ", " a b"])


@settings(max_examples=200, deadline=None)
@given(
    overlap=st.sampled_from([0.0, 2.0, 4.0, 15.0]),
    n=st.integers(1, 4),
    data=st.data(),
)
def test_output_invariants_for_any_window_results(overlap, n, data):
    """Whatever the backend says, the result is ordered, non-overlapping and in range."""
    step = 30.0 - overlap
    duration = (n - 1) * step + data.draw(st.floats(overlap + 0.1, 30.0))
    windows = []
    for k in range(n):
        valid = min(30.0, duration - k * step)
        segs = []
        for _ in range(data.draw(st.integers(0, 5))):
            a = data.draw(st.floats(0, 30))
            b = data.draw(st.floats(0, 30))
            segs.append(
                (min(a, b), max(a, b), data.draw(_texts), data.draw(st.booleans()))
            )
        windows.append(tw(k, k * step, sorted(segs), valid=valid))
    segments = stitch(windows, overlap, duration)
    prev = 0.0
    for s in segments:
        assert prev <= s.start <= s.end <= duration
        assert s.text.strip()
        prev = s.end


# -- windows that segment the same speech differently -------------------------------------


def simulated_windows(truth, total_s, overlap_s, seed, p_break, jitter_s):
    """What a model might return: each window hears the words inside it (a word it hears
    less than 60 ms of is dropped, one cut by its edge starts at 0.0 or leaves the last
    segment open), with times off by up to ``jitter_s`` and its own random segmentation.
    """
    rng = np.random.default_rng(seed)
    plan = WindowPlan.from_seconds(overlap_s)
    starts = window_starts(round(total_s * SAMPLE_RATE), plan)
    windows = []
    for k, s in enumerate(starts):
        w0 = s / SAMPLE_RATE
        w1 = min(w0 + 30.0, total_s)
        last = k == len(starts) - 1
        heard = []
        for text, a, b in truth:
            j = rng.uniform(-jitter_s, jitter_s)
            ha, hb = max(a + j, w0), min(b + j, w1)
            if hb - ha >= 0.06:
                heard.append((text, ha - w0, hb - w0, a <= w0, b >= w1 and not last))
        segs, group = [], []
        for i, w in enumerate(heard):
            group.append(w)
            if i == len(heard) - 1 or rng.random() < p_break:
                open_end = group[-1][4]
                segs.append(
                    Segment(
                        0.0 if group[0][3] else round(group[0][1], 2),
                        30.0 if open_end else round(group[-1][2], 2),
                        "".join(" " + g[0] for g in group),
                        open_end,
                    )
                )
                group = []
        windows.append(TimedWindow(k, w0, w1 - w0, WindowResult(tuple(segs), "en")))
    return windows


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    overlap_s=st.sampled_from([0.0, 1.0, 2.0, 4.0, 5.0, 8.0]),
    p_break=st.sampled_from([0.1, 0.3, 0.7]),
)
def test_independent_segmentation_per_window(seed, overlap_s, p_break):
    """Adjacent windows rarely agree on segment boundaries; no word may suffer for it."""
    audio, truth = make_tone_speech(150, seed, pause_prob=0.05)
    total = audio.shape[0] / SAMPLE_RATE
    windows = simulated_windows(truth, total, overlap_s, seed, p_break, jitter_s=0.04)
    check(stitch(windows, overlap_s, total), truth, "phrase", total)


def test_speech_only_one_window_heard_is_kept():
    """In the overlap each window dropped what the other heard: keep both, in order."""
    windows = [
        tw(0, 0.0, [(10.0, 12.0, " start"), (28.4, 29.0, " only left")]),
        tw(1, 26.0, [(1.0, 2.0, " only right"), (6.0, 7.0, " end")], valid=10.0),
    ]
    segments = stitch(windows, overlap=4.0, duration=36.0)
    assert transcript_text(segments) == "start only right only left end"
    assert [(s.start, s.end) for s in segments][1:3] == [(27.0, 28.0), (28.4, 29.0)]


def test_tone_backend_interface():
    backend = ToneBackend(model="tone:phrase", device="cuda", dtype="float16")
    assert (backend.model_id, backend.device, backend.dtype) == (
        "tone:phrase",
        "cpu",
        "float32",
    )
    assert backend.grouping == "phrase" and ToneBackend().grouping == "word"
    with pytest.raises(ValueError, match="grouping"):
        ToneBackend(model="tone:sentence")
    audio, truth = place([(3, 1.0, 1.5), (4, 1.7, 2.0), (5, 29.8, 30.0)], 30.0)
    [result] = backend.transcribe([backend.prepare(audio)], DecodeOptions())
    assert result.language == "en" and result.n_tokens == 3
    assert [s.text for s in result.segments] == [" w3 w4", " w5"]
    assert result.segments[-1].open_end and not result.segments[0].open_end
    assert result.segments[0].start == pytest.approx(1.0, abs=0.02)
    assert result.segments[0].end == pytest.approx(2.0, abs=0.02)
