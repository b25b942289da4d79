"""Stitching window results into one transcript (pipeline/stitch.py), and the known-answer
guard for chunking, batching and stitching together (DESIGN: keep a known-answer test model
as the guard for every change to chunking or batching).

Windows no longer overlap (stages/chunk.py cuts at pauses), so stitching is a merge: crafted
window results check its arithmetic exactly; tone speech (tests/tone_backend.py) run through
plan_windows -> ToneBackend -> stitch checks, against the known truth, that no word is lost,
doubled or misplaced by more than 0.1 s.
"""

import functools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.constants import N_SAMPLES, PCM_DTYPE, SAMPLE_RATE
from pipeline.stitch import majority_language, stitch, transcript_text
from pipeline.types import DecodeOptions, Segment, TimedWindow, WindowResult
from stages.chunk import WindowPlan, iter_windows, plan_windows
from tests.tone_backend import ToneBackend, make_tone_speech, score

SR = SAMPLE_RATE
CLEAN = dict(lost=0, doubled=0, misplaced=0, out_of_order=0)


def tw(index, start, segments, valid=30.0, language="en"):
    """A TimedWindow from (start, end, text[, open_end]) tuples in window seconds."""
    segs = tuple(Segment(*s) for s in segments)
    return TimedWindow(index=index, start=start, valid=valid, result=WindowResult(segs, language))


def spans(segments):
    return [(s.start, s.end, s.text) for s in segments]


# -- stitch: crafted window results, exact expectations -----------------------------------


def test_windows_in_any_order_give_ordered_absolute_segments():
    windows = [
        tw(0, 0.0, [(1.0, 4.5, " One."), (5.0, 22.0, " Two.")], valid=22.4),
        tw(1, 23.0, [(0.4, 3.0, " Three."), (3.5, 20.0, " Four.")], valid=24.0),
        tw(2, 47.0, [(0.0, 2.5, " Five.", True)], valid=2.5),
    ]
    expected = [
        (1.0, 4.5, " One."),
        (5.0, 22.0, " Two."),
        (23.4, 26.0, " Three."),
        (26.5, 43.0, " Four."),
        (47.0, 49.5, " Five."),
    ]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        segments = stitch([windows[k] for k in order], duration=49.5)
        assert spans(segments) == expected
    assert segments[-1].open_end and not any(s.open_end for s in segments[:-1])
    assert transcript_text(segments) == "One. Two. Three. Four. Five."


def test_segments_clamped_to_their_window_and_to_the_duration():
    windows = [
        # Times a model may give: before the window's start, past its real audio (the
        # zero padding), past the 30 s window itself.
        tw(0, 0.0, [(-0.5, 1.0, " early"), (18.0, 29.0, " late", True)], valid=20.0),
        tw(1, 21.0, [(-1.0, 2.0, " before"), (10.0, 30.0, " padding", True)], valid=12.0),
        tw(2, 40.0, [(1.0, 4.0, " tail"), (6.0, 7.0, " beyond")], valid=30.0),
    ]
    # duration 45 s: window 2's audio ends there, whatever its valid says.
    segments = stitch(windows, duration=45.0)
    assert spans(segments) == [
        (0.0, 1.0, " early"),
        (18.0, 20.0, " late"),
        (21.0, 23.0, " before"),
        (31.0, 33.0, " padding"),
        (41.0, 44.0, " tail"),
        (45.0, 45.0, " beyond"),
    ]
    # duration 0: no clamp to a duration, only to each window's audio.
    assert spans(stitch(windows))[-1] == (46.0, 47.0, " beyond")


def test_empty_text_segments_are_dropped():
    windows = [
        tw(0, 0.0, [(0.0, 1.0, ""), (1.0, 2.0, "   "), (2.0, 3.0, " kept"), (3.0, 4.0, "\n")]),
        tw(1, 30.0, [(0.0, 1.0, " ")], valid=5.0),
    ]
    assert spans(stitch(windows, duration=35.0)) == [(2.0, 3.0, " kept")]
    assert stitch([], duration=0.0) == []
    assert stitch([tw(0, 0.0, [])], duration=3.0) == []


def test_a_segment_starting_before_the_previous_end_moves_there():
    windows = [
        tw(
            0,
            0.0,
            # Given out of order; sorted by start: a, c, b.
            [(1.5, 3.0, " b"), (0.0, 2.0, " a"), (0.5, 1.0, " c")],
            valid=10.0,
        ),
        # Timestamps of adjacent windows can disagree: this one says its first segment
        # starts before the window does.
        tw(1, 10.0, [(-0.3, 1.0, " d"), (0.9, 2.0, " e")], valid=10.0),
    ]
    assert spans(stitch(windows, duration=20.0)) == [
        (0.0, 2.0, " a"),
        (2.0, 2.0, " c"),  # wholly inside a: moved to a's end, zero length
        (2.0, 3.0, " b"),
        (10.0, 11.0, " d"),
        (11.0, 12.0, " e"),
    ]


def test_times_rounded_to_milliseconds():
    windows = [tw(0, 10.0004, [(1.23456, 2.34567, " x")], valid=5.0)]
    assert spans(stitch(windows)) == [(11.235, 12.346, " x")]


def test_overlapping_windows_are_an_error_naming_both():
    windows = [tw(0, 0.0, [(0, 1, " a")], valid=30.0), tw(1, 25.0, [(0, 1, " b")], valid=30.0)]
    for order in (windows, windows[::-1]):
        with pytest.raises(ValueError, match=r"window 1 starts at 25\.000 s, inside window 0"):
            stitch(order, duration=55.0)
    # Three windows, the overlap between the last two.
    with pytest.raises(ValueError, match=r"window 7 .* inside window 3"):
        stitch([tw(0, 0.0, [], 20.0), tw(3, 20.0, [], 20.0), tw(7, 39.9, [], 10.0)])
    # Touching windows are fine, and so is a disagreement under a microsecond.
    stitch([tw(0, 0.0, [], valid=25.4), tw(1, 25.4, [], valid=4.0)])
    stitch([tw(0, 0.0, [], valid=25.4000005), tw(1, 25.4, [], valid=4.0)])


def test_duplicate_indexes_are_an_error():
    with pytest.raises(ValueError, match="index"):
        stitch([tw(0, 0.0, [], valid=10.0), tw(0, 20.0, [], valid=10.0)])
    with pytest.raises(ValueError, match="index"):
        stitch([tw(2, 0.0, [], valid=10.0), tw(1, 10.0, []), tw(2, 40.0, [])])


_texts = st.sampled_from(["", "  ", " a", " b c", " d e f"])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 5), cut=st.booleans())
def test_output_invariants_for_any_window_results(data, n, cut):
    """Whatever the backend says: ordered, non-overlapping, inside each segment's own
    window and the duration, and every segment with text is kept, once."""
    windows, start = [], data.draw(st.floats(0, 5))
    for k in range(n):
        valid = data.draw(st.floats(0.1, 30))
        segs = []
        for _ in range(data.draw(st.integers(0, 5))):
            a, b = sorted(data.draw(st.floats(-2, 32)) for _ in range(2))
            segs.append((a, b, data.draw(_texts) + f" #{k}", data.draw(st.booleans())))
        windows.append(tw(k, start, segs, valid=valid))
        start += valid + data.draw(st.sampled_from([0.0, 0.5, 31.0]))
    end = windows[-1].start + windows[-1].valid
    duration = data.draw(st.floats(windows[-1].start, end)) if cut else 0.0
    random.Random(n).shuffle(windows)
    segments = stitch(windows, duration)
    by_index = {w.index: w for w in windows}
    assert len(segments) == sum(len(w.result.segments) for w in windows)
    prev = 0.0
    for s in segments:
        w = by_index[int(s.text.rsplit("#", 1)[1])]
        hi = min(w.start + w.valid, duration) if duration > 0 else w.start + w.valid
        assert prev <= s.start <= s.end
        assert round(w.start, 3) - 1e-9 <= s.start and s.end <= round(hi, 3) + 1e-9
        prev = s.end


# -- transcript_text and majority_language -------------------------------------------------


def test_transcript_text():
    segs = [Segment(0, 1, " Hello"), Segment(1, 2, " world."), Segment(2, 3, "  Again ")]
    assert transcript_text(segs) == "Hello world.  Again"
    assert transcript_text([]) == ""
    assert transcript_text([Segment(0, 1, "   ")]) == ""


def test_majority_language_weighs_characters_of_text():
    windows = [
        tw(0, 0.0, [(0, 2, " bonjour")], language="fr"),
        tw(1, 30.0, [(0, 9, " a much longer stretch of english")], language="en"),
        tw(2, 60.0, [(0, 2, " salut"), (3, 4, " merci")], language="fr"),
    ]
    assert majority_language(windows) == "en"  # 32 characters (spaces inside count) against 17
    assert majority_language(windows[::2]) == "fr"


def test_majority_language_ties_go_to_the_first_window():
    windows = [
        tw(0, 0.0, [(0, 1, " abc")], language="de"),
        tw(1, 30.0, [(0, 1, "   xyz ")], language="en"),  # surrounding spaces do not count
    ]
    assert majority_language(windows) == "de"
    assert majority_language(windows[::-1]) == "de"  # first by index, not by arrival
    assert majority_language([tw(5, 0.0, [(0, 1, " abc")], language="en"), windows[0]]) == "de"


def test_majority_language_ignores_windows_without_text_or_language():
    windows = [
        tw(0, 0.0, [], language="cy"),  # silence: its language is a guess
        tw(1, 30.0, [(1.0, 2.0, "   ")], language="cy"),  # no text either
        tw(2, 60.0, [(0, 9, " plenty of text but no language")], language=None),
        tw(3, 90.0, [(3.0, 5.0, " hi")], language="en"),
    ]
    assert majority_language(windows) == "en"
    assert majority_language(windows[:3]) is None
    assert majority_language([]) is None


# -- the known-answer guard: tone speech through chunking, batching and stitching ---------


@functools.lru_cache(maxsize=None)
def tone_speech(seed: int, kind: str = "default"):
    """A few minutes of tone speech with its truth (and the kinds of pauses it has)."""
    if kind == "default":  # 0.1-0.3 s gaps between words, a 0.8-1.5 s pause now and then
        audio, truth = make_tone_speech(260, seed)
    elif kind == "no pauses":  # only inter-word gaps: every cut is in one, in its middle
        audio, truth = make_tone_speech(300, seed, gap_s=(0.1, 0.2), pause_prob=0.0)
    elif kind == "long words":  # long words, short gaps: few places to cut at all
        audio, truth = make_tone_speech(
            150, seed, word_s=(0.8, 2.5), gap_s=(0.1, 0.15), pause_prob=0.0
        )
    elif kind == "noise floor":  # a -70 dB room: levels relative to the floor, not zero
        audio, truth = make_tone_speech(260, seed)
        floor = 10 ** (-70 / 20) * np.random.default_rng(seed).standard_normal(len(audio))
        audio = (audio + floor).astype(PCM_DTYPE)
    else:
        raise ValueError(kind)
    return audio, tuple(truth)


def padded(audio: np.ndarray, start: int, end: int) -> np.ndarray:
    out = np.zeros(N_SAMPLES, dtype=PCM_DTYPE)
    out[: end - start] = audio[start:end]
    return out


def transcribe(backend, windows, audio, batch: int):
    """[(index, start, end, WindowResult)], ToneBackend in batches of ``batch`` windows."""
    out = []
    for i in range(0, len(windows), batch):
        group = windows[i : i + batch]
        prepared = [backend.prepare(padded(audio, s, e)) for _, s, e in group]
        results = backend.transcribe(prepared, DecodeOptions())
        assert len(results) == len(group)
        out.extend((k, s, e, r) for (k, s, e), r in zip(group, results))
    return out


def timed(results, order_seed: int = 0):
    """TimedWindows in a shuffled order, as they may arrive from the workers."""
    out = [TimedWindow(k, s / SR, (e - s) / SR, r) for k, s, e, r in results]
    random.Random(order_seed).shuffle(out)
    return out


def check_clean(segments, truth, grouping, duration):
    details = []
    result = score(segments, list(truth), grouping, details=details)
    assert result == CLEAN, f"{result}: " + "; ".join(details[:8])
    assert transcript_text(segments).split() == [t[0] for t in truth]
    assert all(0 <= s.start <= s.end <= duration for s in segments)


def check_words_whole(windows, truth):
    """Every word lies wholly inside exactly one window: no cut touches a word."""
    for text, a, b in truth:
        a, b = round(a * SR), round(b * SR)
        inside = [k for k, s, e in windows if s <= a and b <= e]
        touched = [k for k, s, e in windows if s < b and a < e]
        assert len(inside) == 1 and touched == inside, (text, a / SR, b / SR, touched)


@pytest.mark.parametrize("grouping", ["word", "phrase"])
@pytest.mark.parametrize(
    "seed, kind",
    [
        (0, "default"),
        (1, "default"),
        (2, "default"),
        (3, "no pauses"),
        (4, "long words"),
        (5, "noise floor"),
    ],
)
def test_tone_speech_every_word_once_in_place(seed, kind, grouping):
    audio, truth = tone_speech(seed, kind)
    duration = len(audio) / SR
    windows = [(k, s, e) for k, (s, e, _) in enumerate(plan_windows(audio))]
    assert len(windows) >= 5  # a few minutes: several cuts to get right
    check_words_whole(windows, truth)
    if kind in ("no pauses", "long words"):  # cut in the middle of inter-word gaps
        assert all(windows[k][1] == windows[k - 1][2] for k in range(1, len(windows)))
    backend = ToneBackend(model=f"tone:{grouping}")
    segments = stitch(timed(transcribe(backend, windows, audio, batch=4), seed), duration)
    check_clean(segments, truth, grouping, duration)


def test_tone_speech_cuts_both_kinds_of_pause():
    """The guard's audio is cut both in long pauses (quiet left out between two windows)
    and in the middle of inter-word gaps (windows that touch)."""

    def kinds(audio):
        ws = plan_windows(audio)
        return {"skip" if s > prev else "touch" for (_, prev, _), (s, _, _) in zip(ws, ws[1:])}

    assert set().union(*(kinds(tone_speech(seed)[0]) for seed in (0, 1, 2))) == {"skip"}
    assert kinds(tone_speech(3, "no pauses")[0]) == {"touch"}
    assert kinds(tone_speech(4, "long words")[0]) == {"touch"}


def test_tone_speech_streamed_and_batched_the_same():
    """The streaming chunker (10 s blocks, like decode's) and any batch size: the same
    windows, the same results, the same transcript."""
    audio, truth = tone_speech(1)
    windows = [(k, s, e) for k, (s, e, _) in enumerate(plan_windows(audio))]
    streamed = list(iter_windows(audio[i : i + 10 * SR] for i in range(0, len(audio), 10 * SR)))
    assert [(w.index, w.start, w.end) for w in streamed] == windows
    backend = ToneBackend(model="tone:phrase")
    reference = transcribe(backend, windows, audio, batch=1)
    for batch in (3, 16):
        assert transcribe(backend, windows, audio, batch=batch) == reference
    results = backend.transcribe([backend.prepare(w.audio) for w in streamed], DecodeOptions())
    assert [r for *_, r in reference] == results
    segments = stitch(timed(reference, order_seed=7), len(audio) / SR)
    check_clean(segments, truth, "phrase", len(audio) / SR)


def test_the_guard_catches_words_cut_lost_or_moved():
    """The guard can fail: fixed 30 s windows cut words, a dropped window loses its words,
    a shifted one misplaces them."""
    audio, truth = tone_speech(0)
    duration = len(audio) / SR
    backend = ToneBackend(model="tone:word")
    # Naive windows: the first cut in the middle of the last word before 30 s, then
    # fixed 30 s steps. The cut word is heard twice, once by each window.
    text, a, b = [t for t in truth if t[2] < N_SAMPLES / SR][-1]
    first = round((a + b) / 2 * SR)
    starts = [0] + list(range(first, len(audio), N_SAMPLES))
    fixed = list(zip(range(len(starts)), starts, starts[1:] + [len(audio)]))
    segments = stitch(timed(transcribe(backend, fixed, audio, batch=8)), duration)
    result = score(segments, list(truth))
    assert result["doubled"] >= 1, result
    halves = [x for x in segments if x.text == " " + text and a - 0.1 <= x.start <= b]
    assert len(halves) == 2, halves

    windows = [(k, s, e) for k, (s, e, _) in enumerate(plan_windows(audio))]
    results = transcribe(backend, windows, audio, batch=8)
    heard = sum(len(r.segments) for *_, r in results[2:3])
    assert heard > 10
    assert score(stitch(timed(results[:2] + results[3:]), duration), list(truth))["lost"] == heard
    moved = [(k, s + (SR // 5 if k == 2 else 0), e, r) for k, s, e, r in results]
    assert score(stitch(timed(moved), duration), list(truth))["misplaced"] == heard


def test_tone_speech_with_other_window_plans():
    """Shorter windows: more cuts, the same guarantee."""
    audio, truth = tone_speech(2)
    plan = WindowPlan(min_s=8.0, max_s=12.0, margin_s=0.2)
    windows = [(k, s, e) for k, (s, e, _) in enumerate(plan_windows(audio, plan))]
    assert len(windows) >= 15
    check_words_whole(windows, truth)
    backend = ToneBackend(model="tone:word")
    segments = stitch(timed(transcribe(backend, windows, audio, batch=5)), len(audio) / SR)
    check_clean(segments, truth, "word", len(audio) / SR)


def test_a_segment_with_words_runs_from_its_first_word_to_its_last():
    """With word timestamps, a segment's times are its words' (openai/whisper and
    faster-whisper do the same): the timestamp tokens alone stamped "Yes.", said at
    11.32-11.74 s, 10.11-11.11 s, and its subtitle cue was gone before the word was said
    (the word itself pinned to 11.11-11.11). Order and the window still bound them; a
    segment without words keeps its timestamp tokens' times."""
    from pipeline.types import Word

    yes = Segment(10.11, 11.11, " Yes.", words=(Word(11.33, 11.59, " Yes.", 0.9),))
    early = Segment(1.0, 4.0, " We met.", words=(Word(0.5, 0.9, " We", 0.9), Word(0.9, 1.6, " met.", 0.9)))
    late = Segment(4.0, 6.0, " Then", words=(Word(1.2, 5.0, " Then", 0.9),))  # before "met." ends
    plain = Segment(6.0, 8.0, " it rained.")
    out = stitch([TimedWindow(0, 20.0, 12.0, WindowResult((early, late, plain, yes)))])
    assert [(s.start, s.end) for s in out] == [(20.5, 21.6), (21.6, 25.0), (26.0, 28.0), (31.33, 31.59)]
    assert [(w.start, w.end) for s in out for w in s.words] == [(20.5, 20.9), (20.9, 21.6), (21.6, 25.0),
                                                                (31.33, 31.59)]  # fmt: skip
    # A word past the window's audio stays inside it.
    (cut,) = stitch([TimedWindow(0, 0.0, 11.2, WindowResult((yes,)))])
    assert (cut.start, cut.end) == (11.2, 11.2) and (cut.words[0].start, cut.words[0].end) == (11.2, 11.2)
