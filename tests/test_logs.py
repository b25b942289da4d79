"""Log lines carry the job id (issue 10), per thread where a worker serves several
requests at once (issue 9)."""

from __future__ import annotations

import logging
import threading

from pipeline import logs


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.addFilter(logs._ContextFilter())
        self.lines: list[tuple[str, str]] = []

    def emit(self, record):
        self.lines.append((record.job, record.getMessage()))


def test_each_thread_stamps_its_own_job():
    log = logging.getLogger("tests.logs")
    log.setLevel(logging.INFO)
    h = _Collect()
    log.addHandler(h)
    try:
        barrier = threading.Barrier(3)

        def work(job):
            with logs.thread_job(job):
                barrier.wait(5)  # all three inside their block at once
                for i in range(20):
                    log.info("%s line %d", job, i)
            log.info("after %s", job)

        threads = [threading.Thread(target=work, args=(f"job-{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        log.info("main")
    finally:
        log.removeHandler(h)
    for job, msg in h.lines:
        if " line " in msg:
            assert msg.startswith(job + " "), (job, msg)  # never another thread's id
        else:
            assert job == "-", (job, msg)  # outside a block: no job
    assert sum(" line " in m for _, m in h.lines) == 60
