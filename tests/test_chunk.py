"""The chunker: windows of at most 30 s cut at pauses (stages/chunk.py).

Three layers of checks:

* crafted signals with exact expectations in samples (the edges: empty stream, exactly
  30 s, one sample past, silence, a steady tone, pauses at and past the search range);
* ``plan_windows`` against ``reference_windows`` below, a plain transcription of the rule
  in the module docstring (loops over the 10 ms frame levels of the whole signal, no
  streaming, no numpy tricks), on crafted and on random signals (Hypothesis);
* ``iter_windows`` against ``plan_windows``: the same windows and the same audio whatever
  the block sizes, in bounded memory.
"""

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pipeline.constants import N_SAMPLES, PCM_DTYPE, SAMPLE_RATE
from stages.chunk import WindowPlan, frame_levels, iter_windows, plan_windows
from tests.media import babble, tone

SR = SAMPLE_RATE
FR = 160  # samples in one 10 ms level frame (the docstring's unit)
LOUD = 0.3  # amplitude of crafted sound: a +-0.3 square wave, exactly -10.46 dB per frame
PLAN = WindowPlan()


# -- the reference: the module docstring's rule, written out plainly ----------------------


def reference_levels(audio: np.ndarray) -> list[float]:
    """dB level of every whole 10 ms frame's first difference (mean square of the 159
    steps within the frame, 1e-12 floor for digital silence)."""
    x = np.asarray(audio, dtype=np.float64)
    levels = []
    for k in range(len(x) // FR):
        frame = x[k * FR : (k + 1) * FR]
        steps = [frame[i] - frame[i - 1] for i in range(1, FR)]
        levels.append(10.0 * math.log10(sum(d * d for d in steps) / (FR - 1) + 1e-12))
    return levels


def reference_windows(audio: np.ndarray, plan: WindowPlan = PLAN) -> list[tuple[int, int, int]]:
    """[(start, end, covered_from)] in samples, by the rule of stages/chunk.py's docstring.

    Where the docstring is silent this follows the module, and says so:
    (a) before the first cut there is no cut threshold: the skip's threshold is the
        coming ``max_s - min_s``'s lowest level plus ``tolerance_db`` alone;
    (b) a stream shorter than one frame has no level at all and is one window;
    (c) a run found at the range's start is extended backwards no further than the frame
        after the window's start (the window keeps at least one frame); run lengths are
        compared inside the range (``starts within [start + min_s, start + max_s]``).
    """
    total = len(audio)
    lv = reference_levels(audio)
    n = len(lv)
    min_f = round(plan.min_s * 100)
    max_f = round(plan.max_s * 100)
    m = round(plan.margin_s * 100)
    if total == 0:
        return []
    if n == 0:  # (b)
        return [(0, total, 0)]
    cut_quiet = None  # (a)
    pos, covered, out = 0, 0, []
    while True:
        # 1. Skip quiet frames; the window starts a margin before the first louder one,
        #    never before the current position. Quiet to the end: no more windows. Quiet:
        #    the coming (max_s - min_s)'s lowest level + tolerance, and at most the last
        #    cut's threshold.
        if pos >= n:
            return out
        local = min(lv[pos : pos + max_f - min_f]) + plan.tolerance_db
        quiet = local if cut_quiet is None else min(cut_quiet, local)
        #    "Louder" is onset_s of frames in a row over quiet (a lone louder frame of
        #    noise is not speech resuming).
        k = max(1, round(plan.onset_s * 100))
        q = pos
        while q + k <= n and not all(v > quiet for v in lv[q : q + k]):
            q += 1
        if q + k > n:
            return out
        start = max(pos, q - m)
        # 3. At most max_s left after the start: the last window, to the stream's end.
        if total - start * FR <= max_f * FR:
            out.append((start * FR, total, covered))
            return out
        # 2. The longest quiet run starting in [start + min_s, start + max_s), latest of
        #    equally long ones, quiet = the range's lowest level + tolerance.
        lo, hi = start + min_f, start + max_f
        quiet = cut_quiet = min(lv[lo:hi]) + plan.tolerance_db
        best = None
        f = lo
        while f < hi:
            if lv[f] <= quiet:
                g = f
                while g < hi and lv[g] <= quiet:
                    g += 1
                if best is None or g - f >= best[1] - best[0]:
                    best = (f, g)
                f = g
            else:
                f += 1
        r0, r1 = best
        while r0 - 1 > start and lv[r0 - 1] <= quiet:  # extended backwards (c)
            r0 -= 1
        if r1 - r0 > 2 * m or r1 == hi:
            end = min(r0 + m, hi)  # a long run: keep a margin of it
        else:
            end = (r0 + r1) // 2  # a short run: cut in its middle
        out.append((start * FR, end * FR, covered))
        covered = end * FR
        pos = end  # the next skip (1.) finds where the pause ends


# -- crafted signals ------------------------------------------------------------------------


def n_samples(seconds: float) -> int:
    return int(round(seconds * SR))


def square(seconds: float, amp: float = LOUD) -> np.ndarray:
    """A +-amp square wave: every whole frame has exactly the same level."""
    return np.where(np.arange(n_samples(seconds)) % 2, amp, -amp).astype(PCM_DTYPE)


def quiet(seconds: float, amp: float = 0.0) -> np.ndarray:
    """Digital silence, or a steady floor at amp (a square wave, so an exact level)."""
    return square(seconds, amp) if amp else np.zeros(n_samples(seconds), PCM_DTYPE)


def bursts(seconds: float, on: float = 0.3, off: float = 0.1, floor: float = 0.0) -> np.ndarray:
    """Speech-like: sound for ``on`` s, a gap of ``off`` s, repeated; starts with sound and
    lasts exactly ``seconds``. Every gap is ``off`` long, so only a crafted pause is longer."""
    period = square(on)
    x = np.concatenate([period, quiet(off, floor)])
    reps = -(-n_samples(seconds) // len(x))
    return np.tile(x, reps)[: n_samples(seconds)]


def cat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate(parts).astype(PCM_DTYPE)


def check_windows(audio: np.ndarray, expected, plan: WindowPlan = PLAN):
    """plan_windows == expected == the reference, and iter_windows agrees sample for sample."""
    got = plan_windows(audio, plan)
    assert got == expected
    assert reference_windows(audio, plan) == expected
    check_invariants(audio, got, plan)
    check_streamed(audio, got, [len(audio)], plan)
    check_streamed(audio, got, [7919, 0, 1, 160, 161], plan)
    return got


def check_invariants(audio, windows, plan=PLAN):
    """At most max_s each, non-empty, in order, never overlapping; covered_from is the
    previous window's end (0 for the first)."""
    prev_end = 0
    for start, end, covered in windows:
        assert covered == prev_end
        assert prev_end <= start < end <= len(audio)
        assert end - start <= round(plan.max_s * 100) * FR <= N_SAMPLES
        prev_end = end


def blocks_of(audio: np.ndarray, sizes):
    """The audio as blocks of the given sizes, cycled (empty ones included), then one
    empty block; sizes must contain a positive one."""
    pos, i = 0, 0
    while pos < len(audio):
        n = sizes[i % len(sizes)]
        yield audio[pos : pos + n]
        pos += n
        i += 1
    yield audio[:0]


def check_streamed(audio, windows, sizes, plan=PLAN):
    """iter_windows over blocks == the given windows; padded audio is exactly the slice."""
    got = list(iter_windows(blocks_of(audio, sizes), plan))
    assert [(w.start, w.end, w.covered_from) for w in got] == windows
    for k, w in enumerate(got):
        assert w.index == k
        assert w.valid == w.end - w.start > 0
        assert w.audio.dtype == PCM_DTYPE and w.audio.shape == (N_SAMPLES,)
        assert w.audio[: w.valid].tobytes() == audio[w.start : w.end].astype(PCM_DTYPE).tobytes()
        assert not np.any(w.audio[w.valid :])  # zero padding to 30 s, in the audio domain
        assert w.start_seconds == w.start / SR and w.valid_seconds == w.valid / SR
    return got


# -- WindowPlan -----------------------------------------------------------------------------


def test_plan_defaults():
    assert (PLAN.min_s, PLAN.max_s, PLAN.margin_s, PLAN.tolerance_db) == (20.0, 30.0, 0.4, 3.0)
    assert (PLAN.min_frames, PLAN.max_frames, PLAN.margin_frames) == (2000, 3000, 40)
    assert PLAN.max_frames * FR == N_SAMPLES
    WindowPlan(min_s=1, max_s=2, margin_s=0, tolerance_db=0)  # ints and zeros are fine
    with pytest.raises(Exception):  # frozen: a shared plan cannot be changed per job
        PLAN.max_s = 10.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(min_s=0.0), "min_s"),
        (dict(min_s=-1.0), "min_s"),
        (dict(min_s=30.0), "min_s"),  # not below max_s
        (dict(min_s=25.0, max_s=25.0), "max_s"),
        (dict(min_s=25.0, max_s=20.0), "max_s"),
        (dict(max_s=30.01), "max_s"),  # more than Whisper's 30 s window
        (dict(max_s=60.0), "max_s"),
        (dict(min_s=float("nan")), "min_s"),
        (dict(max_s=float("inf")), "max_s"),
        (dict(margin_s=-0.1), "margin_s"),
        (dict(margin_s=10.0), "margin_s"),  # half of min_s: windows could be all margin
        (dict(min_s=1.0, max_s=2.0, margin_s=0.5), "margin_s"),
        (dict(margin_s=float("nan")), "margin_s"),
        (dict(tolerance_db=-1.0), "tolerance_db"),
        (dict(min_s="20"), "min_s"),
        (dict(max_s=None), "max_s"),
        (dict(margin_s=True), "margin_s"),
        (dict(tolerance_db="3 dB"), "tolerance_db"),
    ],
)
def test_plan_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WindowPlan(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(tolerance_db=float("nan")),  # every frame compares False: nothing is quiet
        dict(tolerance_db=float("inf")),  # everything is quiet: no window, ever
        dict(min_s=0.001, max_s=0.004, margin_s=0.0),  # 0 frames each: no search range
        dict(min_s=0.5, max_s=0.505, margin_s=0.0),  # both round to 50 frames
    ],
)
def test_plan_rejects_values_that_only_fail_later(kwargs):
    """Validated before any process starts (DESIGN practice 3): values that pass
    validation but break (or silently empty) every plan made with them."""
    with pytest.raises(ValueError):
        WindowPlan(**kwargs)


def test_frame_levels():
    x = cat(quiet(0.01), square(0.01, 0.1), square(0.01, 1.0), np.ones(159, PCM_DTYPE))
    lv = frame_levels(x)
    assert lv.shape == (3,)  # whole frames only
    # The level of the frame's first difference: a +-A square (at the Nyquist rate) steps
    # by 2A every sample.
    np.testing.assert_allclose(lv, [20 * np.log10(1e-6), 20 * np.log10(0.2), 20 * np.log10(2.0)], atol=1e-4)
    # What is not speech hardly counts: a DC offset not at all, 50 Hz hum 26 dB under
    # a 1 kHz tone as loud, pink noise's 10 ms levels within a few dB.
    t = np.arange(SR) / SR
    assert frame_levels(np.full(SR, 0.02, PCM_DTYPE)).max() == pytest.approx(-120.0)
    hum, tone = (frame_levels((0.1 * np.sin(2 * np.pi * f * t)).astype(PCM_DTYPE)).mean() for f in (50, 1000))
    assert tone - hum > 25
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft(rng.standard_normal(10 * SR))
    pink = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), 10 * SR)
    lv = frame_levels((0.01 * pink / pink.std()).astype(PCM_DTYPE))
    assert lv.max() - lv.min() < 6
    audio = babble(3.0)
    np.testing.assert_allclose(frame_levels(audio), reference_levels(audio), rtol=0, atol=1e-9)
    assert frame_levels(np.zeros(0, PCM_DTYPE)).shape == (0,)


# -- crafted edges, exact expectations (samples) -------------------------------------------


def test_empty_stream_has_no_window():
    assert plan_windows(np.zeros(0, PCM_DTYPE)) == [] == reference_windows(np.zeros(0))
    assert list(iter_windows([])) == []
    assert list(iter_windows([np.zeros(0, PCM_DTYPE)] * 3)) == []


@pytest.mark.parametrize("n", [1, 100, 159])
def test_under_one_frame_is_one_window(n):
    """Too short to measure a level: one window of what there is (chunk.py's own rule)."""
    audio = np.full(n, 0.25, PCM_DTYPE)
    [w] = check_streamed(audio, check_windows(audio, [(0, n, 0)]), [1])
    assert w.valid == n and np.all(w.audio[:n] == 0.25)


def test_exactly_30_s_and_one_sample_past():
    # Bursts with 0.1 s gaps and one 0.5 s pause at 23.9-24.4 s (frames 2390-2440).
    x = cat(bursts(23.9), quiet(0.5), bursts(5.6))
    assert len(x) == N_SAMPLES
    check_windows(x, [(0, N_SAMPLES, 0)])  # exactly 30 s: one window, no cut
    # One sample more: the pause is the longest run in [20 s, 30 s) and shorter than two
    # margins, so the cut is in its middle (frame 2415) and the next window starts there.
    y = cat(x, np.full(1, LOUD, PCM_DTYPE))
    check_windows(y, [(0, 2415 * FR, 0), (2415 * FR, N_SAMPLES + 1, 2415 * FR)])
    # 5 s more instead of one sample: the same cut.
    z = cat(x, bursts(5.0))
    check_windows(z, [(0, 2415 * FR, 0), (2415 * FR, len(z), 2415 * FR)])


def test_digital_silence_and_steady_tone_have_no_window():
    for audio in (
        quiet(75.0),
        quiet(30.0),
        quiet(0.01),  # one whole frame of silence
        square(45.0),  # steady sound: never above its own floor
        tone(440.0, 95.0),
        tone(1234.5, 31.0, amp=0.9),
    ):
        check_windows(audio, [])


def test_single_long_pause_at_25_s():
    # Pause 25.0-26.5 s: frames 2500-2650, 150 frames > 2 margins (80).
    x = cat(bursts(25.0), quiet(1.5), bursts(23.5))
    end0 = (2500 + 40) * FR  # the pause's start + margin
    start1 = (2650 - 40) * FR  # the pause's end - margin
    ws = check_windows(x, [(0, end0, 0), (start1, len(x), end0)])
    assert ws[1][2] == ws[0][1]  # covered_from = the previous window's end
    assert not np.any(x[end0 - 40 * FR : start1 + 40 * FR])  # both cuts inside the pause
    # The stream ends exactly 30 s after the second window's start: still the last one.
    longer = cat(bursts(25.0), quiet(1.5), bursts(33.5, on=0.25, off=0.1))
    y = longer[: start1 + N_SAMPLES]
    check_windows(y, [(0, end0, 0), (start1, start1 + N_SAMPLES, end0)])
    # One sample more and it is cut, at the latest 0.1 s gap of its range (frames
    # 5580-5590); the last window starts there and takes the rest.
    z = longer[: start1 + N_SAMPLES + 1]
    cut = 5585 * FR
    check_windows(z, [(0, end0, 0), (start1, cut, end0), (cut, len(z), cut)])


def test_same_pause_over_a_floor_and_the_tolerance():
    """Levels are relative to the range's floor: a -60 dB floor instead of digital
    silence gives the same cuts; a pause within 3 dB of the floor is still quiet."""
    x = cat(bursts(25.0, floor=1e-3), quiet(1.5, 1e-3), bursts(23.5, floor=1e-3))
    check_windows(x, [(0, 2540 * FR, 0), (2610 * FR, len(x), 2540 * FR)])
    y = cat(bursts(25.0, floor=1e-3), quiet(1.5, 1.2e-3), bursts(23.5, floor=1e-3))  # +1.6 dB
    check_windows(y, [(0, 2540 * FR, 0), (2610 * FR, len(y), 2540 * FR)])
    # 6 dB above the floor the pause is not quiet: the cut goes to the latest 0.1 s gap
    # in [20 s, 30 s) instead (frames 2960-2970, cut in its middle).
    z = cat(bursts(25.0, floor=1e-3), quiet(1.5, 2e-3), bursts(23.5, floor=1e-3))
    check_windows(z, [(0, 2965 * FR, 0), (2965 * FR, len(z), 2965 * FR)])


def test_latest_of_equally_long_runs():
    # 0.25 s on, 0.1 s off: gaps at frames [25 + 35k, 35 + 35k). The latest whole one in
    # [2000, 3000) is 2965-2975 (2999-3009 has one frame in range): cut at 2970.
    x = bursts(45.0, on=0.25, off=0.1)
    check_windows(x, [(0, 2970 * FR, 0), (2970 * FR, len(x), 2970 * FR)])


def test_leading_silence():
    # 8 s of silence: the first window starts 0.4 s before the sound (frame 800 - 40).
    x = cat(quiet(8.0), bursts(20.0))
    check_windows(x, [(760 * FR, len(x), 0)])
    # The start is relative: the search range is [start + 20 s, start + 30 s).
    y = cat(quiet(8.0), bursts(25.0), quiet(1.0), bursts(20.0))  # pause at 33-34 s
    check_windows(y, [(760 * FR, 3340 * FR, 0), (3360 * FR, len(y), 3340 * FR)])
    # Under a margin of silence: the window starts at the stream's start, not before.
    z = cat(quiet(0.2), bursts(10.0))
    check_windows(z, [(0, len(z), 0)])


def test_a_window_starts_where_speech_resumes_over_a_noise_floor():
    """A 14 s pause over a steady noise floor, white or pink, 50 dB under the speech: the
    next window starts a margin before the speech, not where a lone frame of the noise rose
    over the quietest one (windows began up to 15 s early, and Whisper stamped the first
    sentence from there). A click of one frame in the pause is not speech either."""
    rng = np.random.default_rng(3)
    x = cat(bursts(24.0), quiet(14.0), bursts(10.0))
    x[n_samples(31.0) : n_samples(31.0) + FR] = LOUD  # a click, one frame
    spectrum = np.fft.rfft(rng.standard_normal(len(x)))
    floors = {
        "white": rng.standard_normal(len(x)),
        "pink": np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), len(x)),
    }
    for name, noise in floors.items():
        y = (x + LOUD * 10 ** (-50 / 20) * noise / noise.std()).astype(PCM_DTYPE)
        ws = plan_windows(y)
        assert len(ws) == 2 and ws[1][0] == (3800 - round(PLAN.margin_s * 100)) * FR, (name, ws)
        check_invariants(x, ws)


def test_pause_longer_than_a_window_is_skipped_whole():
    # bursts(20) ends with a 0.1 s gap (frames 1990-2000): the run in the range starts at
    # 2000, is extended back to 1990 and reaches the range's end; the next window starts
    # 0.4 s before the sound at 55 s.
    x = cat(bursts(20.0), quiet(35.0), bursts(15.0))
    check_windows(x, [(0, 2030 * FR, 0), (5460 * FR, len(x), 2030 * FR)])


def test_trailing_silence():
    # Within 30 s of the last window's start, the silence is in that window...
    x = cat(bursts(20.0), quiet(5.0))
    check_windows(x, [(0, len(x), 0)])
    # ... past it, the window keeps a margin of it and no window follows.
    y = cat(bursts(20.0), quiet(40.0))
    check_windows(y, [(0, 2030 * FR, 0)])
    z = cat(bursts(20.0), quiet(40.0), np.full(159, LOUD, PCM_DTYPE))  # no whole frame
    check_windows(z, [(0, 2030 * FR, 0)])


def test_run_reaching_the_end_of_the_range():
    # A long pause from 27.9 s (frames 2790-3800) runs past the range's end (3000).
    x = cat(bursts(28.0), quiet(10.0), bursts(10.0))
    check_windows(x, [(0, 2830 * FR, 0), (3760 * FR, len(x), 2830 * FR)])
    # A short one (29.7-30.2 s) that reaches it is treated as long: the window keeps
    # what fits (exactly 30 s) and the next starts where the first ended.
    y = cat(bursts(29.7), quiet(0.5), bursts(20.0))
    check_windows(y, [(0, N_SAMPLES, 0), (N_SAMPLES, len(y), N_SAMPLES)])


def test_backwards_extension_stops_after_the_windows_start():
    """Case (c) of the reference: everything from the window's first frame to the range
    is quiet by the range's threshold (a -40 dB stretch before -10 dB sound)."""
    x = cat(quiet(0.5), square(24.5, 0.01), bursts(25.0, floor=0.01))
    # The first threshold is silence's (-117 dB): the window starts at frame 50 - 40.
    # The range's threshold is -37 dB: the run 2010-2500 extends back to frame 11, and
    # the next window starts 0.4 s before the -10 dB sound.
    check_windows(x, [(10 * FR, 51 * FR, 0), (2460 * FR, len(x), 51 * FR)])


def test_every_window_at_most_30_s_in_order_on_babble():
    audio = babble(300.0, seed=3)
    ws = plan_windows(audio)
    assert ws == reference_windows(audio)
    check_invariants(audio, ws)
    assert len(ws) >= 10
    assert all(19 * SR <= e - s for s, e, _ in ws[:-1])  # babble pauses are under 1 s
    check_streamed(audio, ws, [SR])


def test_bad_blocks():
    for bad in (np.zeros((10, 2), PCM_DTYPE), np.zeros((1, 160), PCM_DTYPE), np.float32(0.5)):
        with pytest.raises(ValueError, match="1-D"):
            list(iter_windows([square(1.0), bad]))


def test_other_float_dtypes_are_converted():
    x = cat(bursts(25.0), quiet(1.5), bursts(23.5))
    got = list(iter_windows([x.astype(np.float64)]))
    assert [(w.start, w.end) for w in got] == [(s, e) for s, e, _ in plan_windows(x)]
    assert all(w.audio.dtype == np.float32 for w in got)


# -- random signals: the module against the reference -------------------------------------


# Minutes of audio per example: shrinking a failure would take minutes too (the crafted
# tests above hold the minimal cases), so a failure is reported as found.
PROPERTY = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)


@st.composite
def signals(draw, max_s: float = 200.0):
    """Random stretches of sound and quiet of random lengths and levels, 0-max_s s,
    sometimes over a steady noise floor: a recipe of stretches repeated, lengths jittered,
    up to a random total."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tiny = draw(st.integers(0, 9)) == 0  # under two frames, sometimes
    total = int(rng.integers(0, 2 * FR if tiny else int(max_s * SR) + 1))
    length = st.one_of(
        st.integers(1, 400),  # slivers, down to one sample
        st.integers(1, 3000).map(lambda f: f * FR),  # whole frames (exact ties)
        st.integers(1, 40 * SR),
    )
    kinds = st.sampled_from(["zeros", "noise", "noise", "square", "bursts"])
    recipe = draw(st.lists(st.tuples(kinds, length, st.integers(-45, 0)), min_size=1, max_size=12))
    parts, n_total, i = [], 0, 0
    while n_total < total:
        kind, n, db = recipe[i % len(recipe)]
        if i >= len(recipe):  # repeats: jittered, and not too many of them
            n = max(int(n * rng.uniform(0.5, 1.5)), SR // 10)
        # Exact levels (squares) on a 2 dB grid: never exactly an odd tolerance apart,
        # where float rounding alone would decide (tolerances below are 0 or odd).
        db = 2 * db if kind == "square" else 2 * db + rng.uniform(0, 1)
        amp = 10 ** (db / 20)
        if kind == "zeros":
            x = np.zeros(n)
        elif kind == "noise":
            x = amp * rng.standard_normal(n)
        elif kind == "square":
            x = np.where(np.arange(n) % 2, amp, -amp)
        else:  # syllables: an on/off envelope of noise
            env = np.repeat(rng.random(n // 1600 + 1) < 0.7, 1600)[:n]
            x = amp * env * rng.standard_normal(n)
        parts.append(x)
        n_total += n
        i += 1
    audio = np.concatenate(parts)[:total] if parts else np.zeros(0)
    floor_db = draw(st.one_of(st.none(), st.integers(-90, -30)))
    if floor_db is not None:
        audio = audio + 10 ** (floor_db / 20) * rng.standard_normal(len(audio))
    return audio.astype(PCM_DTYPE)


@settings(max_examples=60, **PROPERTY)
@given(audio=signals())
def test_plan_equals_reference_on_random_signals(audio):
    ws = plan_windows(audio)
    assert ws == reference_windows(audio)
    check_invariants(audio, ws)


@st.composite
def plans(draw):
    min_s = draw(st.sampled_from([0.05, 0.5, 1.0, 2.5, 10.0, 20.0, 29.0]))
    max_s = draw(st.floats(min_s + 0.02, 30.0))
    margin_s = draw(st.sampled_from([0.0, 0.01, 0.1, 0.4, 2.0]).filter(lambda m: m < min_s / 2))
    tol = draw(st.sampled_from([0.0, 1.0, 3.0, 7.0, 25.0]))
    return WindowPlan(min_s, max_s, margin_s, tol)


@settings(max_examples=60, **PROPERTY)
@given(audio=signals(max_s=60.0), plan=plans())
def test_plan_equals_reference_for_other_plans(audio, plan):
    """Short windows make many cuts per signal; the rule is the same for any plan."""
    ws = plan_windows(audio, plan)
    assert ws == reference_windows(audio, plan)
    check_invariants(audio, ws, plan)


# -- streaming ------------------------------------------------------------------------------

block_size = st.one_of(
    st.just(0),
    st.integers(1, 3),
    st.integers(150, 170),  # about a level frame
    st.integers(1000, 200_000),
    st.integers(N_SAMPLES + 1, 800_000),  # more than a window in one block
)


@settings(max_examples=50, **PROPERTY)
@given(
    audio=signals(max_s=100.0),
    sizes=st.lists(block_size, max_size=11),
    big=st.integers(3 * SR, 800_000),
    plan=st.one_of(st.just(PLAN), plans()),
)
def test_streaming_equals_one_shot(audio, sizes, big, plan):
    """Any block sizes (empty, 1 sample, over 30 s): exactly plan_windows' windows with
    exactly the stream's samples. (``big`` bounds the number of blocks.)"""
    windows = plan_windows(audio, plan)
    check_streamed(audio, windows, sizes + [big], plan)
    # The same stream ending exactly max_s after one of its windows' starts: the windows
    # before are unchanged and that one is the last (rule 3: "at most max_s left").
    max_n = round(plan.max_s * 100) * FR
    for k, (start, _, covered) in enumerate(windows):
        if start + max_n < len(audio):
            cut = audio[: start + max_n]
            expected = windows[:k] + [(start, start + max_n, covered)]
            assert plan_windows(cut, plan) == expected == reference_windows(cut, plan)
            check_streamed(cut, expected, sizes + [big], plan)
            break


def test_streaming_with_one_sample_blocks_at_every_cut():
    """Blocks of 1 sample around every window edge, large ones elsewhere."""
    x = cat(bursts(20.0), quiet(35.0), bursts(25.0), quiet(1.5), bursts(23.5), quiet(0.7))
    ws = plan_windows(x)
    assert ws == reference_windows(x) and len(ws) == 3
    edges = sorted({e for s, e, _ in ws} | {s for s, e, _ in ws})

    def blocks():
        pos = 0
        for edge in edges:
            a = max(pos, edge - 700)
            if a > pos:
                yield x[pos:a]
            for i in range(a, min(edge + 700, len(x))):
                yield x[i : i + 1]
                yield x[:0]
            pos = max(pos, min(edge + 700, len(x)))
        yield x[pos:]

    got = list(iter_windows(blocks()))
    assert [(w.start, w.end, w.covered_from) for w in got] == ws
    for w in got:
        assert w.audio[: w.valid].tobytes() == x[w.start : w.end].tobytes()


# -- memory ---------------------------------------------------------------------------------


def _peak_bytes(audio: np.ndarray, block: int) -> tuple[int, int]:
    """(windows, tracemalloc peak) of iter_windows over views of audio; the consumer keeps
    nothing, so what is held is the chunker's (and the one window being handed over)."""

    def blocks():
        for i in range(0, len(audio), block):
            yield audio[i : i + block]  # a view: the source allocates nothing

    n = 0
    tracemalloc.start()
    try:
        for w in iter_windows(blocks()):
            n += 1
            del w
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return n, peak


def test_memory_bounded_whatever_the_length():
    window_bytes = N_SAMPLES * PCM_DTYPE.itemsize
    block_bytes = SR * PCM_DTYPE.itemsize
    audio = babble(20 * 60.0, seed=7)  # made before tracing starts
    n5, peak5 = _peak_bytes(audio[: 5 * 60 * SR], SR)
    n20, peak20 = _peak_bytes(audio, SR)
    assert n5 >= 10 and n20 >= 4 * n5 - 2
    limit = 3 * window_bytes + block_bytes
    assert peak5 < limit and peak20 < limit, (peak5 / window_bytes, peak20 / window_bytes)
    # Independent of length: 4x the audio, about the same peak (how much is buffered at a
    # cut depends on where the cut falls relative to the blocks: a quarter window of play).
    assert peak20 <= peak5 + window_bytes / 4, (peak5 / window_bytes, peak20 / window_bytes)

    silence = np.zeros(10 * 60 * SR, PCM_DTYPE)
    n, peak = _peak_bytes(silence, SR)
    assert n == 0
    assert peak < limit, peak / window_bytes
    n, peak_short = _peak_bytes(silence[: 2 * 60 * SR], SR)
    assert n == 0 and peak <= peak_short + block_bytes


def test_only_a_window_running_to_the_streams_end_is_final():
    """``Window.final``: the last window when its audio runs to the stream's end (the
    quality review decodes a short dropped tail again there); a stream that ends in a
    long quiet stretch has none (nothing after the last window was ever decoded)."""
    x = babble(70.0, seed=3)
    blocks = [x[i : i + 17_000] for i in range(0, len(x), 17_000)]
    ws = list(iter_windows(blocks))
    assert len(ws) >= 3 and [w.final for w in ws] == [False] * (len(ws) - 1) + [True]
    assert ws[-1].end == len(x)
    quiet_end = np.concatenate([x, np.zeros(40 * SAMPLE_RATE, PCM_DTYPE)])
    ws = list(iter_windows([quiet_end]))
    assert ws[-1].end < len(quiet_end) and not any(w.final for w in ws)
