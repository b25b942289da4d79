"""Stage-level profile of one job: where each stage's time went, and how full its rings ran.

Every stage keeps three clocks per job (see ``runtime.StageStats``): starved (waiting for
input), blocked (waiting for a free slot or queue space downstream) and busy (the rest of
its life in the job). The slowest stage is the one with the most busy time: when the
pipeline overlaps well, the wall time is close to that stage's busy time (issue 4 asks for
wall <= 1.15 x the busiest stage's busy time).

The runtime calls the first stage "source"; users, the CLI's ``--profile`` table, the
RunPod ``"profile": true`` output and bench.py call it "download" (``DISPLAY`` is the one
place that maps the names). Trace (Chrome trace-event JSON for Perfetto) and plot (PNG)
writers live in ``pipeline/trace.py``.
"""

from __future__ import annotations

import statistics

from pipeline.runtime import STAGES

# Runtime stage name -> the name users see (issue 4 calls the source stage "download").
DISPLAY = {"source": "download", "decode": "decode", "chunk": "chunk", "infer": "infer"}
# What a stage's ``units`` count, and the ring it writes (the infer stage writes none).
UNIT = {"source": "B", "decode": "samples", "chunk": "windows", "infer": "windows"}
RING = {"source": "bytes", "decode": "pcm", "chunk": "window", "infer": None}


def display_name(stage: str) -> str:
    """``"source"`` -> ``"download"``; other names unchanged."""
    return DISPLAY.get(stage, stage)


# ---------------------------------------------------------------------------- interval maths


def merge_spans(spans) -> list[tuple[float, float]]:
    """Union of (t0, t1, ...) intervals as sorted, disjoint (t0, t1) pairs."""
    out: list[list[float]] = []
    for t0, t1, *_ in sorted(spans, key=lambda s: s[0]):
        if t1 <= t0:
            continue
        if out and t0 <= out[-1][1]:
            out[-1][1] = max(out[-1][1], t1)
        else:
            out.append([t0, t1])
    return [(a, b) for a, b in out]


def _length(spans) -> float:
    return sum(b - a for a, b in spans)


def _subtract(spans, minus) -> list[tuple[float, float]]:
    """Disjoint sorted ``spans`` minus disjoint sorted ``minus``."""
    out = []
    j = 0
    for a, b in spans:
        cur = a
        while j < len(minus) and minus[j][1] <= cur:
            j += 1
        k = j
        while k < len(minus) and minus[k][0] < b:
            m0, m1 = minus[k]
            if m0 > cur:
                out.append((cur, m0))
            cur = max(cur, m1)
            k += 1
        if cur < b:
            out.append((cur, b))
    return out


def _clip(spans, lo: float, hi: float):
    return [(max(a, lo), min(b, hi)) for a, b in spans if min(b, hi) > max(a, lo)]


def stage_timeline(s: dict) -> dict:
    """A stage's life split into disjoint busy / starved / blocked intervals.

    Needs the spans a profiled job records (``Job(profile=True)``). Waits may overlap
    (decode's ffmpeg feeder thread waits for input while its main thread waits for a free
    PCM slot): an instant that is both counts as blocked, so the three always add up to the
    stage's life. Returns {"busy": [(t0, t1)], "starved": [...], "blocked": [...]}.
    """
    lo, hi = s["t_start"], s["t_end"]
    blocked = _clip(merge_spans(x for x in s.get("spans", ()) if x[2] == "blocked"), lo, hi)
    starved = _clip(merge_spans(x for x in s.get("spans", ()) if x[2] == "starved"), lo, hi)
    starved = _subtract(starved, blocked)
    waits = merge_spans(blocked + starved)
    busy = _subtract([(lo, hi)], waits)
    return {"busy": busy, "starved": starved, "blocked": blocked}


def stage_clocks(s: dict) -> dict:
    """busy_s, starved_s, blocked_s and overlap_s of one stage's stats dict, adding up to
    life_s. From the spans where the job was profiled, else from the running totals (where
    overlapping waits, rare, show up as ``overlap_s`` and busy is clamped at 0)."""
    life = s["t_end"] - s["t_start"]
    if s.get("spans"):
        tl = stage_timeline(s)
        starved, blocked = _length(tl["starved"]), _length(tl["blocked"])
        overlap = max(0.0, s["starved_s"] + s["blocked_s"] - starved - blocked)
        return {"life_s": life, "busy_s": _length(tl["busy"]), "starved_s": starved,
                "blocked_s": blocked, "overlap_s": overlap}  # fmt: skip
    starved, blocked = s["starved_s"], s["blocked_s"]
    overlap = max(0.0, starved + blocked - life)
    # As with spans, an instant both starved and blocked counts as blocked.
    starved = max(0.0, starved - overlap)
    return {"life_s": life, "busy_s": max(0.0, life - starved - blocked), "starved_s": starved,
            "blocked_s": blocked, "overlap_s": overlap}  # fmt: skip


# --------------------------------------------------------------------------------- profile


def profile_from_outcome(outcome) -> dict:
    """A JSON-ready summary of a ``JobOutcome``.

    Keys: audio_s, wall_s, rtfx (audio seconds per wall second), model_load_s,
    model_waited_s (how long this job waited for the model, if at all), first_result_s
    (submission to the first window's result), windows, tokens, busiest,
    wall_over_busiest, and "stages": {"download"|"decode"|"chunk"|"infer": {items, units,
    unit, life_s, busy_s, starved_s, blocked_s, overlap_s, throughput_per_s (items per busy
    second), units_per_s, ring, ring_mean, ring_max, start_s, first_s, end_s}} (times
    relative to the job's submission). Stages appear in pipeline order.
    """
    t0 = outcome.t_submit
    tr = outcome.transcript
    end = max((s["t_end"] for s in outcome.stages.values()), default=t0)
    wall = tr.timings.get("total_s") or (end - t0)
    stages = {}
    for name in STAGES:
        s = outcome.stages.get(name)
        if s is None:
            continue
        clocks = stage_clocks(s)
        occ = [o for _, o in s.get("occupancy", []) if o >= 0]
        busy = clocks["busy_s"]
        stages[display_name(name)] = {
            "items": s["items"],
            "units": s["units"],
            "unit": UNIT[name],
            **{k: round(v, 4) for k, v in clocks.items()},
            "throughput_per_s": round(s["items"] / busy, 2) if busy > 0 else None,
            "units_per_s": round(s["units"] / busy, 1) if busy > 0 else None,
            "ring": RING[name],
            "ring_mean": round(statistics.fmean(occ), 2) if occ else None,
            "ring_max": max(occ) if occ else None,
            "start_s": round(s["t_start"] - t0, 4),
            "first_s": round(s["t_first"] - t0, 4) if s.get("t_first") else None,
            "end_s": round(s["t_end"] - t0, 4),
        }
    model = outcome.model or {}
    ready = model.get("t_ready")
    tokens = sum(getattr(w.result, "n_tokens", 0) for w in outcome.windows)
    busiest = max(stages, key=lambda k: stages[k]["busy_s"], default=None)
    top = stages[busiest]["busy_s"] if busiest else 0.0
    return {
        "audio_s": tr.duration,
        "wall_s": round(wall, 4),
        "rtfx": round(tr.duration / wall, 2) if wall > 0 else None,
        "model_load_s": round(model["load_s"], 3) if "load_s" in model else None,
        "model_waited_s": round(max(0.0, ready - t0), 3) if ready else None,
        "first_result_s": round(outcome.t_first_result - t0, 4) if outcome.t_first_result else None,
        "windows": len(outcome.windows),
        # Decodes the infer stage ran, by kind (stages/review.py): "window" (each window's
        # first), "fallback" (a hotter temperature), "tail", "split" (re-decodes),
        # "language" (a window decoded again in its job's language: stages/language.py).
        "decodes": dict((outcome.stages.get("infer") or {}).get("decodes") or {}),
        # The decoder's figures (issue 9): engine ("slots" or "generate"), slots, steps,
        # row_steps_used / row_steps_computed (their ratio: "utilisation"), encoder_s,
        # decoder_s, tokens, tokens_per_s.
        "decode": (outcome.stages.get("infer") or {}).get("decode"),
        "tokens": tokens,
        "busiest": busiest,
        "wall_over_busiest": round(wall / top, 3) if top > 0 else None,
        "stages": stages,
    }


def _amount(unit: str | None, value: float | None, rate: bool = False) -> str:
    """A stage's work in words: bytes as MB, samples as seconds of audio, windows as such
    (issue 10: the table said "items", which meant ring slots for one stage, batches for
    another)."""
    from pipeline.constants import SAMPLE_RATE

    if value is None:
        return "-"
    per = "/s" if rate else ""
    if unit == "B":
        return f"{value / 1e6:.1f} MB{per}"
    if unit == "samples":
        return f"{value / SAMPLE_RATE:.1f} s audio{per}"
    return f"{value:.1f} {unit}{per}" if rate else f"{value:.0f} {unit}"


def format_profile(p: dict) -> str:
    """The profile as a table for a terminal (stderr): each stage's work in its own unit
    (download: MB, decode: seconds of audio, chunk and infer: windows) and rate per busy
    second, its busy / starved / blocked seconds, and the ring it writes (slots in use)."""
    lines = [
        f"audio {p['audio_s']:.1f} s  wall {p['wall_s']:.2f} s  {p['rtfx'] or 0:.1f}x real time  "
        f"windows {p['windows']}  model load {_f(p['model_load_s'])} s  "
        # A cold start: the job's wall time includes this wait, which no stage's row shows.
        + (f"waited for the model {_f(p['model_waited_s'])} s  " if p.get("model_waited_s") else "")
        + f"first result {_f(p['first_result_s'])} s",
        f"{'stage':<9}{'work':>15}{'busy s':>9}{'starved s':>11}{'blocked s':>11}"
        f"{'rate (per busy s)':>20}{'ring':>8}{'mean':>6}{'max':>5}",
    ]
    for name, s in p["stages"].items():
        unit = s.get("unit")
        lines.append(
            f"{name:<9}{_amount(unit, s.get('units')):>15}{s['busy_s']:>9.3f}{s['starved_s']:>11.3f}"
            f"{s['blocked_s']:>11.3f}{_amount(unit, s.get('units_per_s'), rate=True):>20}"
            f"{s.get('ring') or '-':>8}{_f(s['ring_mean'], 1):>6}{_f(s['ring_max'], 0):>5}"
        )
    lines.append("ring: slots in use (mean, max) of the ring the stage writes")
    decodes = p.get("decodes") or {}
    if decodes:
        lines.append("decodes: " + ", ".join(f"{k} {v}" for k, v in decodes.items()))
    d = p.get("decode")
    if d and d.get("row_steps_computed"):
        lines.append(
            f"decoder ({d.get('engine')}, {d.get('slots') or '-'} slots): {d['steps']} steps, "
            f"slot utilisation {d['row_steps_used'] / d['row_steps_computed']:.3f} "
            f"({d['row_steps_used']} of {d['row_steps_computed']} row steps), encoder "
            f"{d['encoder_s']:.2f} s, decoder {d['decoder_s']:.2f} s, {_f(d.get('tokens_per_s'), 1)} tokens/s"
        )
    busiest = p.get("busiest")
    if busiest:
        b = p["stages"][busiest]["busy_s"]
        lines.append(f"busiest stage: {busiest} ({b:.2f} s busy); "
                     f"wall / busiest = {_f(p.get('wall_over_busiest'))}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
