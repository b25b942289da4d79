"""The profile's bookkeeping and the trace/plot writers (issue 4).

Busy + starved + blocked must add up to each stage's life; the Chrome trace must be in the
trace-event format Perfetto reads (complete events and counters, microseconds).
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from pipeline.profile import (
    DISPLAY,
    format_profile,
    merge_spans,
    profile_from_outcome,
    stage_clocks,
    stage_timeline,
)
from pipeline.runtime import STAGES, StageStats
from pipeline.trace import chrome_trace, write_plot, write_trace
from pipeline.types import TimedWindow, WindowResult

TONE = "tests.tone_backend:ToneBackend"


def _close(a, b, tol=1e-6):
    return abs(a - b) <= tol


# ---------------------------------------------------------------------- interval arithmetic


def test_merge_spans():
    assert merge_spans([]) == []
    assert merge_spans([(3, 4, "x"), (0, 1, "x"), (0.5, 2, "x"), (2, 2.5, "x")]) == [(0, 2.5), (3, 4)]
    assert merge_spans([(1, 1, "x")]) == []  # empty spans vanish


def _stats(t_start, t_end, spans, items=3, occupancy=()):
    starved = sum(b - a for a, b, k in spans if k == "starved")
    blocked = sum(b - a for a, b, k in spans if k == "blocked")
    life = t_end - t_start
    return {
        "t_start": t_start, "t_end": t_end, "t_first": t_start + 0.1, "life_s": life,
        "busy_s": max(0.0, life - starved - blocked), "starved_s": starved, "blocked_s": blocked,
        "items": items, "units": float(items), "spans": list(spans), "occupancy": list(occupancy),
    }  # fmt: skip


def test_timeline_partitions_the_life():
    s = _stats(10.0, 20.0, [(10.0, 12.0, "starved"), (15.0, 16.0, "blocked"), (19.0, 20.0, "starved")])
    tl = stage_timeline(s)
    assert tl["busy"] == [(12.0, 15.0), (16.0, 19.0)]
    assert tl["starved"] == [(10.0, 12.0), (19.0, 20.0)]
    assert tl["blocked"] == [(15.0, 16.0)]
    c = stage_clocks(s)
    assert _close(c["busy_s"], 6.0) and _close(c["starved_s"], 3.0) and _close(c["blocked_s"], 1.0)
    assert _close(c["busy_s"] + c["starved_s"] + c["blocked_s"], c["life_s"])
    assert c["overlap_s"] == 0.0


def test_overlapping_waits_still_add_up():
    # decode's feeder thread can wait for input while its main thread waits for a slot:
    # the instant counts once, as blocked.
    s = _stats(0.0, 10.0, [(1.0, 4.0, "starved"), (3.0, 5.0, "blocked"), (9.5, 11.0, "starved")])
    c = stage_clocks(s)
    assert _close(c["blocked_s"], 2.0)
    assert _close(c["starved_s"], 2.0 + 0.5)  # 1-3, and 9.5-10 (clipped to the life)
    assert _close(c["busy_s"] + c["starved_s"] + c["blocked_s"], 10.0)
    # Without spans (profiling off) the totals say the same, overlap included.
    s2 = dict(s, spans=[], starved_s=8.0, blocked_s=4.0)
    c2 = stage_clocks(s2)
    assert _close(c2["busy_s"] + c2["starved_s"] + c2["blocked_s"], 10.0)
    assert _close(c2["overlap_s"], 2.0) and c2["busy_s"] == 0.0


def test_stage_stats_bookkeeping():
    """runtime.StageStats itself: spans match the totals and the clocks add up."""
    st = StageStats(t_start=time.monotonic(), profile=True)
    time.sleep(0.02)  # busy
    with st.wait("starved"):
        time.sleep(0.03)
    st.produced(1)
    with st.wait("blocked"):
        time.sleep(0.02)
    time.sleep(0.01)
    d = st.finish()
    assert len(d["spans"]) == 2
    assert _close(sum(b - a for a, b, k in d["spans"] if k == "starved"), d["starved_s"])
    assert _close(sum(b - a for a, b, k in d["spans"] if k == "blocked"), d["blocked_s"])
    assert _close(d["busy_s"] + d["starved_s"] + d["blocked_s"], d["life_s"])
    c = stage_clocks(d)
    assert _close(c["busy_s"], d["busy_s"], 1e-4)
    assert c["busy_s"] >= 0.025 and c["starved_s"] >= 0.025 and c["blocked_s"] >= 0.015


# ---------------------------------------------------------------- a fake outcome, formats


def _fake_outcome(profile=True):
    t0 = 1000.0
    stages = {
        "source": _stats(t0 + 0.01, t0 + 1.0, [(t0 + 0.5, t0 + 1.0, "blocked")],
                         occupancy=[(t0 + 0.1, 1), (t0 + 0.5, 4)]),
        "decode": _stats(t0 + 0.02, t0 + 2.0, [(t0 + 0.02, t0 + 0.1, "starved")],
                         occupancy=[(t0 + 0.3, 1), (t0 + 1.0, 2)]),
        "chunk": _stats(t0 + 0.03, t0 + 2.1, [(t0 + 0.03, t0 + 1.9, "starved")],
                        occupancy=[(t0 + 1.0, 1)]),
        "infer": _stats(t0 + 0.04, t0 + 3.0, [(t0 + 0.04, t0 + 1.0, "starved")]),
    }  # fmt: skip
    if not profile:
        for s in stages.values():
            s["spans"], s["occupancy"] = [], []
    windows = [TimedWindow(i, 26.0 * i, 30.0, WindowResult((), "en", 4)) for i in range(3)]
    tr = SimpleNamespace(duration=90.0, timings={"total_s": 3.0})
    return SimpleNamespace(
        transcript=tr, stages=stages, model={"load_s": 1.5, "t_ready": t0 - 5},
        t_submit=t0, t_first_result=t0 + 1.5, windows=windows,
    )  # fmt: skip


@pytest.mark.parametrize("profile", [True, False])
def test_profile_from_outcome(profile):
    p = profile_from_outcome(_fake_outcome(profile))
    for key in ("audio_s", "wall_s", "rtfx", "model_load_s", "first_result_s", "stages"):
        assert key in p
    assert list(p["stages"]) == ["download", "decode", "chunk", "infer"]
    assert p["rtfx"] == 30.0 and p["first_result_s"] == 1.5 and p["tokens"] == 12
    assert p["busiest"] == "infer"
    for name, s in p["stages"].items():
        for key in ("items", "busy_s", "starved_s", "blocked_s", "throughput_per_s", "ring_mean", "ring_max"):
            assert key in s, (name, key)
        assert abs(s["busy_s"] + s["starved_s"] + s["blocked_s"] - s["life_s"]) < 1e-3
    if profile:
        assert p["stages"]["download"]["ring_max"] == 4 and p["stages"]["download"]["ring"] == "bytes"
    table = format_profile(p)
    for name in ("download", "decode", "chunk", "infer", "busiest stage: infer"):
        assert name in table
    # A job that waited for the model says so (a cold start's wall time, in no stage's row).
    assert "waited for the model" not in table
    assert "waited for the model 2.50 s" in format_profile({**p, "model_waited_s": 2.5})
    json.dumps(p)  # JSON-ready


def check_trace(doc: dict, stages=("download", "decode", "chunk", "infer")) -> None:
    """The Chrome trace-event format as Perfetto reads it."""
    ev = doc["traceEvents"]
    assert isinstance(ev, list) and ev
    for e in ev:
        assert e["ph"] in ("X", "C", "M", "i")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e["name"], str)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] == "C":
            assert all(isinstance(v, (int, float)) for v in e["args"].values())
    names = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    assert set(stages) <= names
    tid = {e["args"]["name"]: e["tid"] for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    for stage in stages:
        busy = [e for e in ev if e["ph"] == "X" and e["tid"] == tid[stage] and e["name"] == "busy"]
        assert busy, stage
    assert any(e["ph"] == "C" for e in ev)
    job = [e for e in ev if e["ph"] == "X" and e["name"] == "job"]
    assert len(job) == 1


def test_chrome_trace_format(tmp_path):
    out = _fake_outcome()
    doc = chrome_trace(out)
    check_trace(doc)
    ev = doc["traceEvents"]
    # Microseconds from submission: download blocked from 0.5 s to 1.0 s.
    dl = next(e["tid"] for e in ev if e["ph"] == "M" and e["args"].get("name") == "download")
    blocked = [e for e in ev if e["ph"] == "X" and e["tid"] == dl and e["name"] == "blocked"]
    assert blocked == [dict(blocked[0], ts=500000.0, dur=500000.0)]
    busy = [e for e in ev if e["ph"] == "X" and e["tid"] == dl and e["name"] == "busy"]
    assert busy[0]["ts"] == pytest.approx(10000.0) and busy[0]["dur"] == pytest.approx(490000.0)
    counters = [e for e in ev if e["ph"] == "C" and e["name"].startswith("bytes")]
    assert [c["args"]["slots"] for c in counters] == [0, 1, 4]
    path = write_trace(tmp_path / "t.json", out)
    check_trace(json.loads(path.read_text()))


def test_plot_is_a_png(tmp_path):
    path = write_plot(tmp_path / "p.png", _fake_outcome(), ring_slots={"bytes": 16, "pcm": 8, "window": 16})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_display_names_cover_the_runtime_stages():
    assert set(DISPLAY) == set(STAGES) and DISPLAY["source"] == "download"


# ------------------------------------------------------------------- a real profiled job


def test_real_job_bookkeeping(tmp_path):
    """Through the real runtime (tone backend: no model): every stage's spans lie inside its
    life and match its totals, and busy + starved + blocked = life."""
    from pipeline.config import Job, PipelineConfig
    from pipeline.runtime import Pipeline
    from tests.media import babble, write_wav

    wav = write_wav(tmp_path / "n.wav", babble(70.0))
    cfg = PipelineConfig(model="tone", backend=TONE, batch_size=2, pcm_block_samples=16000)
    with Pipeline(cfg) as pipe:
        pipe.wait_ready(timeout=120)
        out = pipe.run_job(Job(str(wav), profile=True), timeout=120)
    assert set(out.stages) == set(STAGES)
    for name, s in out.stages.items():
        for a, b, kind in s["spans"]:
            assert s["t_start"] - 1e-6 <= a <= b <= s["t_end"] + 1e-6, name
        starved = sum(b - a for a, b, k in s["spans"] if k == "starved")
        blocked = sum(b - a for a, b, k in s["spans"] if k == "blocked")
        assert starved == pytest.approx(s["starved_s"], abs=1e-6), name
        assert blocked == pytest.approx(s["blocked_s"], abs=1e-6), name
        c = stage_clocks(s)
        assert c["busy_s"] + c["starved_s"] + c["blocked_s"] == pytest.approx(s["life_s"], abs=1e-3), name
        if name != "decode":  # one thread: waits never overlap, the runtime's busy agrees
            assert c["overlap_s"] < 1e-6 and c["busy_s"] == pytest.approx(s["busy_s"], abs=1e-3), name
    assert out.stages["source"]["occupancy"] and out.stages["chunk"]["occupancy"]
    p = profile_from_outcome(out)
    assert p["windows"] == 3 and p["stages"]["chunk"]["items"] == 3
    check_trace(chrome_trace(out))
