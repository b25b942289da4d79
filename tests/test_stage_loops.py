"""The stage loops' plumbing without processes (pipeline/runtime/loops.py): how a job ends
in a stage (``_job_ends``), the dispatcher that gives each job its own thread
(``_demux``), and a job thread's defect reaching the stage's main thread."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from pipeline.ring import Stopped
from pipeline.runtime.context import JobCancelled, StageStats
from pipeline.runtime.loops import JobThreads, _demux, _job_ends


class FakeCtx:
    name = "decode"

    def __init__(self):
        self.failed, self.reports, self.stop = [], [], threading.Event()

    def alive(self):
        return not self.stop.is_set()

    def fail_job(self, seq, exc):
        self.failed.append((seq, str(exc)))

    def report(self, *msg):
        self.reports.append(msg)


class FakeInput:
    def __init__(self):
        self.drained = 0

    def drain(self):
        self.drained += 1


def _ends(body_exc=None):
    ctx, q_out, src = FakeCtx(), queue.Queue(), FakeInput()
    stats = StageStats(t_start=time.monotonic())
    with _job_ends(ctx, 7, stats, q_out, src):
        if body_exc is not None:
            raise body_exc
        q_out.put(("end", 7, {"samples": 1}))
    return ctx, [q_out.get_nowait() for _ in range(q_out.qsize())], src


def test_a_job_that_gets_through_sends_its_own_end_and_leaves_no_input():
    ctx, out, src = _ends()
    assert out == [("end", 7, {"samples": 1})] and src.drained == 1 and not ctx.failed
    assert [r[:3] for r in ctx.reports] == [("stats", 7, "decode")]


@pytest.mark.parametrize("exc, failed", [(JobCancelled(), []), (ValueError("bad input"), [(7, "bad input")])])
def test_a_cancelled_or_failed_job_sends_an_aborted_end(exc, failed):
    ctx, out, src = _ends(exc)
    assert out == [("end", 7, {"aborted": True})] and src.drained == 1
    assert ctx.failed == failed and [r[:3] for r in ctx.reports] == [("stats", 7, "decode")]


def test_shutdown_goes_on_up():
    ctx, q_out, src = FakeCtx(), queue.Queue(), FakeInput()
    with pytest.raises(Stopped):
        with _job_ends(ctx, 7, StageStats(t_start=0.0), q_out, src):
            raise Stopped()
    assert q_out.empty() and not ctx.reports


def test_demux_gives_each_job_its_messages_in_order_on_its_own_thread():
    ctx, q_in = FakeCtx(), queue.Queue()
    got: dict[int, list] = {}
    threads = {}

    def job_main(ctx, start, q_job, tag):
        seq = start[1]
        threads[seq] = threading.current_thread().name
        got[seq] = [start[0]]
        while True:
            msg = q_job.get(timeout=5)
            got[seq].append(msg[2] if msg[0] == "data" else msg[0])
            if msg[0] == "end":
                return

    for msg in [("start", 1, {}), ("data", 1, "a"), ("start", 2, {"job_id": "x"}), ("data", 2, "p"),
                ("data", 1, "b"), ("end", 2, {}), ("data", 1, "c"), ("end", 1, {}), None]:  # fmt: skip
        q_in.put(msg)
    _demux(ctx, q_in, job_main, "tag")  # returns at the sentinel
    deadline = time.monotonic() + 5
    while (len(got.get(1, [])) < 5 or len(got.get(2, [])) < 3) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == {1: ["start", "a", "b", "c", "end"], 2: ["start", "p", "end"]}
    assert threads[1] != threads[2]


def test_a_message_for_a_job_that_never_started_ends_the_stage():
    ctx, q_in = FakeCtx(), queue.Queue()
    q_in.put(("data", 3, "x"))
    with pytest.raises(RuntimeError, match="job 3, which never started"):
        _demux(ctx, q_in, lambda *a: None)


def test_a_defect_in_a_job_thread_ends_the_stage_with_it():
    ctx, q_in = FakeCtx(), queue.Queue()

    def job_main(ctx, start, q_job):
        raise KeyError("a bug")

    q_in.put(("start", 1, {}))
    with pytest.raises(KeyError, match="a bug"):
        _demux(ctx, q_in, job_main)  # the next poll finds the crash


def test_job_threads_hold_later_jobs_back_and_notice_the_stop():
    ctx = FakeCtx()
    jobs = JobThreads(ctx)
    release = threading.Event()
    jobs.start(1, None, release.wait)
    t0 = time.monotonic()
    threading.Timer(0.3, release.set).start()
    jobs.wait_below(1)  # until job 1 is gone
    assert time.monotonic() - t0 >= 0.25 and jobs.running == 0
    busy = threading.Event()
    jobs.start(2, None, busy.wait)
    ctx.stop.set()
    with pytest.raises(Stopped):
        jobs.wait_below(1)
    busy.set()
