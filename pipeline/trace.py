"""A profiled job's timeline as a Chrome trace (for Perfetto / chrome://tracing) or a PNG.

Both read a ``JobOutcome`` of a job run with ``Job(profile=True)``: each stage's wait spans
and output-ring occupancy samples (``runtime.StageStats``). Busy spans are the gaps between
the waits (``profile.stage_timeline``).

Chrome trace-event format: ``{"traceEvents": [...], "displayTimeUnit": "ms"}``; one
process (pid 1) with a track (tid) per stage holding its busy spans as complete events
(``"ph": "X"``, ``ts``/``dur`` in microseconds from the job's submission), a "job" track
with the whole job and the first result, and one counter (``"ph": "C"``) per ring for its
occupancy in slots.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.profile import RING, display_name, stage_timeline
from pipeline.runtime import STAGES

PID = 1
JOB_TID = 100
_US = 1e6


def _us(t: float, t0: float) -> float:
    return round((t - t0) * _US, 1)


def chrome_trace(outcome, *, name: str = "whisper pipeline", waits: bool = True) -> dict:
    """Trace-event JSON (a dict) of one profiled job. ``waits``: also draw starved and
    blocked spans (category "wait") on the stage tracks, next to the busy ones."""
    t0 = outcome.t_submit
    ev: list[dict] = [
        {"ph": "M", "pid": PID, "tid": 0, "name": "process_name", "args": {"name": name}},
        {"ph": "M", "pid": PID, "tid": JOB_TID, "name": "thread_name", "args": {"name": "job"}},
        {"ph": "M", "pid": PID, "tid": JOB_TID, "name": "thread_sort_index", "args": {"sort_index": 0}},
    ]
    end = t0
    for i, stage in enumerate(STAGES, start=1):
        s = outcome.stages.get(stage)
        if s is None:
            continue
        label = display_name(stage)
        end = max(end, s["t_end"])
        ev.append({"ph": "M", "pid": PID, "tid": i, "name": "thread_name", "args": {"name": label}})
        ev.append({"ph": "M", "pid": PID, "tid": i, "name": "thread_sort_index", "args": {"sort_index": i}})
        tl = stage_timeline(s)
        kinds = ("busy", "starved", "blocked") if waits else ("busy",)
        for kind in kinds:
            for a, b in tl[kind]:
                ev.append({
                    "ph": "X", "pid": PID, "tid": i, "name": kind,
                    "cat": "busy" if kind == "busy" else "wait",
                    "ts": _us(a, t0), "dur": round((b - a) * _US, 1),
                })  # fmt: skip
        ring = RING.get(stage)
        if ring and s.get("occupancy"):
            cname = f"{ring} ring ({label} -> next)"
            ev.append({"ph": "C", "pid": PID, "tid": i, "name": cname, "ts": _us(s["t_start"], t0),
                       "args": {"slots": 0}})  # fmt: skip
            for t, n in s["occupancy"]:
                if n >= 0:
                    ev.append({"ph": "C", "pid": PID, "tid": i, "name": cname, "ts": _us(t, t0),
                               "args": {"slots": n}})  # fmt: skip
    wall = (outcome.transcript.timings.get("total_s") if outcome.transcript else None) or (end - t0)
    ev.append({"ph": "X", "pid": PID, "tid": JOB_TID, "name": "job", "cat": "job", "ts": 0.0,
               "dur": round(wall * _US, 1)})  # fmt: skip
    if outcome.t_first_result:
        ev.append({"ph": "i", "s": "t", "pid": PID, "tid": JOB_TID, "name": "first result",
                   "ts": _us(outcome.t_first_result, t0)})  # fmt: skip
    return {"traceEvents": ev, "displayTimeUnit": "ms",
            "otherData": {"audio_s": getattr(outcome.transcript, "duration", None)}}  # fmt: skip


def write_trace(path, outcome, **kw) -> Path:
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(outcome, **kw)))
    return path


_COLORS = {"busy": "#2b8a3e", "starved": "#d0d0d0", "blocked": "#e8590c"}


def ring_series(outcome, ring_slots: dict | None = None) -> list[dict]:
    """The rings' occupancy lines of the plot: for each ring, ``label``, ``xs`` and ``ys``
    (seconds since submission, slots in use; sampled when the stage writes a slot, then held
    to the end of the run, so every line spans the whole run: issue 10 saw the window
    ring's line stop at the chunker's last write), and its ``capacity`` (slots) if known."""
    t0 = outcome.t_submit
    ends = [s.get("t_end") for s in outcome.stages.values() if s.get("t_end") is not None]
    run_end = (max(ends) - t0) if ends else None
    out = []
    for stage in STAGES:
        ring = RING.get(stage)
        s = outcome.stages.get(stage)
        occ = [(t - t0, n) for t, n in (s or {}).get("occupancy", []) if n >= 0]
        if not ring or not occ:
            continue
        xs, ys = [x for x, _ in occ], [y for _, y in occ]
        if run_end is not None and xs[-1] < run_end:
            xs.append(run_end)
            ys.append(ys[-1])
        out.append({"ring": ring, "label": f"{ring} ring", "xs": xs, "ys": ys,
                    "capacity": (ring_slots or {}).get(ring)})
    return out


def plot_figure(outcome, *, title: str | None = None, ring_slots: dict | None = None):
    """The matplotlib figure ``write_plot`` saves (stage timelines above ring occupancy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    t0 = outcome.t_submit
    present = [s for s in STAGES if s in outcome.stages]
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    drawn = set()
    for row, stage in enumerate(present):
        tl = stage_timeline(outcome.stages[stage])
        y = len(present) - 1 - row
        for kind in ("starved", "blocked", "busy"):
            bars = [(a - t0, b - a) for a, b in tl[kind]]
            if bars:
                ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=_COLORS[kind], linewidth=0)
                drawn.add(kind)
    ax.set_yticks(range(len(present)))
    ax.set_yticklabels([display_name(s) for s in reversed(present)])
    # The legend shows what is drawn, as it is drawn (issue 10: a dotted line appeared as
    # a filled box, and kinds never drawn were listed).
    handles = [Patch(color=c, label=k) for k, c in _COLORS.items() if k in drawn]
    if outcome.t_first_result:
        ax.axvline(outcome.t_first_result - t0, color="#1c7ed6", lw=1, ls=":")
        handles.append(Line2D([], [], color="#1c7ed6", lw=1, ls=":", label="first result"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, ncol=4)
    ax.set_title(title or "pipeline timeline")
    for series in ring_series(outcome, ring_slots):
        (line,) = ax2.step(series["xs"], series["ys"], where="post", label=series["label"], lw=1)
        if series["capacity"] is not None:
            ax2.axhline(series["capacity"], color=line.get_color(), ls="--", lw=0.7,
                        label=f"{series['label']} capacity ({series['capacity']} slots)")
    ax2.set_ylabel("slots in use")
    ax2.set_xlabel("seconds since the job was submitted")
    if ax2.lines:
        ax2.legend(loc="upper right", fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def write_plot(path, outcome, *, title: str | None = None, ring_slots: dict | None = None) -> Path:
    """A PNG: stage timelines (busy / starved / blocked) above the rings' occupancy.
    ``ring_slots``: {"bytes": 16, ...} draws each ring's capacity as a labelled dashed line."""
    import matplotlib.pyplot as plt

    fig = plot_figure(outcome, title=title, ring_slots=ring_slots)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
