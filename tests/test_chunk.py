"""Window arithmetic (exact, crafted edges) and the streaming chunker (property-tested)."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.constants import DEFAULT_OVERLAP_S, N_SAMPLES, PCM_DTYPE, SAMPLE_RATE
from stages.chunk import Window, WindowPlan, iter_windows, window_starts

PLAN = WindowPlan()  # 30 s windows, default overlap
W, O, S = PLAN.window_samples, PLAN.overlap_samples, PLAN.step_samples


def test_plan_defaults_and_validation():
    assert (W, O) == (N_SAMPLES, round(DEFAULT_OVERLAP_S * SAMPLE_RATE))
    assert S == W - O
    assert WindowPlan.from_seconds(5.0) == WindowPlan(N_SAMPLES, 5 * SAMPLE_RATE)
    assert WindowPlan.from_seconds(0).step_samples == N_SAMPLES
    for bad in (-1, N_SAMPLES, N_SAMPLES + 1):
        with pytest.raises(ValueError, match="overlap"):
            WindowPlan(overlap_samples=bad)
    with pytest.raises(ValueError, match="overlap"):
        WindowPlan.from_seconds(30.0)
    with pytest.raises(ValueError):
        WindowPlan(window_samples=0, overlap_samples=0)
    with pytest.raises(ValueError):
        WindowPlan(overlap_samples=1.5)


@pytest.mark.parametrize(
    "total, expected",
    [
        (0, []),  # empty stream: no window
        (1, [0]),
        (W - 1, [0]),  # shorter than a window
        (W, [0]),  # exactly 30 s
        (W + 1, [0, S]),  # one sample past
        (S + O, [0]),  # = W: the second window would bring nothing new
        (S + O + 1, [0, S]),  # one sample past the overlap
        (2 * S + O, [0, S]),
        (2 * S + O + 1, [0, S, 2 * S]),
        (10 * S + O, [k * S for k in range(10)]),
    ],
)
def test_window_starts_edges(total, expected):
    assert window_starts(total, PLAN) == expected


def test_window_starts_no_overlap_and_rule():
    plan = WindowPlan(overlap_samples=0)
    assert window_starts(W, plan) == [0]
    assert window_starts(W + 1, plan) == [0, W]
    assert window_starts(3 * W, plan) == [0, W, 2 * W]
    # The rule itself, checked by brute force on a small plan.
    small = WindowPlan(window_samples=10, overlap_samples=3)
    for total in range(0, 60):
        brute = [
            k * 7
            for k in range(20)
            if (k == 0 and total > 0) or (k > 0 and total > k * 7 + 3)
        ]
        assert window_starts(total, small) == brute, total
    with pytest.raises(ValueError):
        window_starts(-1, PLAN)


def _reference(audio: np.ndarray, plan: WindowPlan) -> list[Window]:
    """One-shot slicing of the whole stream: what the streaming chunker must equal."""
    out = []
    for k, s in enumerate(window_starts(audio.shape[0], plan)):
        piece = audio[s : s + plan.window_samples]
        padded = np.zeros(plan.window_samples, dtype=PCM_DTYPE)
        padded[: piece.shape[0]] = piece
        out.append(Window(index=k, start=s, valid=piece.shape[0], audio=padded))
    return out


def _split(audio: np.ndarray, sizes: list[int]):
    """Blocks of the given sizes (cycled), covering the audio; empty blocks included."""
    pos, i = 0, 0
    while pos < audio.shape[0]:
        n = sizes[i % len(sizes)]
        yield audio[pos : pos + n]
        pos += n
        i += 1
    yield audio[:0]


def _assert_same(got: list[Window], want: list[Window]):
    assert [(w.index, w.start, w.valid) for w in got] == [
        (w.index, w.start, w.valid) for w in want
    ]
    for g, w in zip(got, want):
        assert g.audio.dtype == PCM_DTYPE and g.audio.shape == w.audio.shape
        np.testing.assert_array_equal(g.audio, w.audio)


@settings(max_examples=150, deadline=None)
@given(
    window=st.integers(1, 64),
    overlap_frac=st.floats(0, 0.99),
    total=st.integers(0, 400),
    sizes=st.lists(st.integers(0, 90), min_size=1, max_size=8).filter(any),
    seed=st.integers(0, 2**16),
)
def test_streaming_equals_one_shot_slicing(window, overlap_frac, total, sizes, seed):
    plan = WindowPlan(window_samples=window, overlap_samples=int(overlap_frac * window))
    audio = np.random.default_rng(seed).uniform(-1, 1, total).astype(PCM_DTYPE)
    got = list(iter_windows(_split(audio, sizes), plan))
    _assert_same(got, _reference(audio, plan))


@pytest.mark.parametrize("overlap_s", [0.0, 2.0, DEFAULT_OVERLAP_S, 5.0])
@pytest.mark.parametrize("extra", [-1, 0, 1, O + 1])
def test_streaming_real_sizes(overlap_s, extra):
    plan = WindowPlan.from_seconds(overlap_s)
    total = 3 * plan.step_samples + plan.overlap_samples + extra
    audio = np.random.default_rng(1).uniform(-1, 1, total).astype(PCM_DTYPE)
    got = list(iter_windows(_split(audio, [123_457, 1, 0, 960_000]), plan))
    _assert_same(got, _reference(audio, plan))
    assert len(got) == len(window_starts(total, plan))


def test_last_window_padded_with_zeros_and_dtype():
    audio = np.ones(W + 5000, dtype=np.float64)  # other float dtypes are converted
    ws = list(iter_windows([audio], PLAN))
    assert len(ws) == 2
    last = ws[-1]
    assert last.start == S and last.valid == W + 5000 - S
    assert last.audio.dtype == np.float32 and last.audio.shape == (W,)
    assert np.all(last.audio[: last.valid] == 1.0)
    assert np.all(last.audio[last.valid :] == 0.0)
    assert last.end == W + 5000
    assert last.start_seconds == S / SAMPLE_RATE


def test_empty_stream_and_bad_blocks():
    assert list(iter_windows([], PLAN)) == []
    assert list(iter_windows([np.zeros(0, np.float32)] * 3, PLAN)) == []
    with pytest.raises(ValueError, match="1-D"):
        list(iter_windows([np.zeros((10, 2), np.float32)], PLAN))


def test_yields_as_soon_as_window_is_complete():
    """A window comes out when its last sample arrives, not when the next block does."""
    fed = []

    def blocks():
        for i in range(4):
            fed.append(i)
            yield np.full(W // 2, i, dtype=PCM_DTYPE)

    it = iter_windows(blocks(), PLAN)
    first = next(it)
    assert first.index == 0 and fed == [0, 1]
    second = next(it)
    assert second.start == S
    # The consumer owns yielded arrays: scribbling on one does not change the next.
    first.audio[:] = 99
    assert not np.any(second.audio == 99)


def test_memory_bounded_for_long_stream():
    """10 min of audio in small blocks: the chunker never holds much more than 2 windows."""
    minutes = 10
    total = minutes * 60 * SAMPLE_RATE
    base = np.random.default_rng(0).uniform(-1, 1, 8192).astype(PCM_DTYPE)
    sizes = np.random.default_rng(1).integers(1, 8192, 4000)

    def blocks():
        pos, i = 0, 0
        while pos < total:
            n = int(min(sizes[i % len(sizes)], total - pos))
            yield base[:n]  # a view: the source itself allocates nothing
            pos += n
            i += 1

    window_bytes = W * PCM_DTYPE.itemsize
    tracemalloc.start()
    try:
        n = 0
        for w in iter_windows(blocks(), PLAN):
            n += 1
            del w  # the consumer keeps nothing, so what is left is the chunker's
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == len(window_starts(total, PLAN)) == 23
    assert peak < 2.3 * window_bytes, f"chunker held {peak / window_bytes:.2f} windows"
