"""``ToneBackend`` that takes its time: for tests that must act in the middle of a run
(Ctrl-C after some windows are done). Each window sleeps ``SLOW_TONE_S`` seconds (default
0.5), like a model busy in generate, and then, when ``SLOW_TONE_MARK`` names a file,
appends a line to it: a test watches that file to know how many windows are done."""

from __future__ import annotations

import os
import time

from tests.tone_backend import ToneBackend


class SlowTone(ToneBackend):
    def transcribe(self, prepared: list, options, **per_row):
        time.sleep(float(os.environ.get("SLOW_TONE_S", "0.5")) * len(prepared))
        out = super().transcribe(prepared, options, **per_row)
        mark = os.environ.get("SLOW_TONE_MARK")
        if mark:
            with open(mark, "a") as f:
                f.write(f"{len(prepared)}\n")
        return out
