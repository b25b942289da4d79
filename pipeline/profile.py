"""Stage-level profile of one job: where each stage's time went, and how full its rings ran.

Every stage keeps three clocks per job (see ``runtime.StageStats``): starved (waiting for
input), blocked (waiting for a free slot or queue space downstream) and busy (the rest of
its life in the job). The slowest stage is the one with the most busy time: when the
pipeline overlaps well, the wall time is close to that stage's busy time.
"""

from __future__ import annotations

import statistics

from pipeline.runtime import STAGES

UNIT = {"source": "B", "decode": "samples", "chunk": "windows", "infer": "windows"}


def profile_from_outcome(outcome) -> dict:
    """A JSON-ready summary of a ``JobOutcome``: audio_s, wall_s, rtfx, model_load_s,
    first_result_s and one entry per stage."""
    t0 = outcome.t_submit
    tr = outcome.transcript
    end = max((s["t_end"] for s in outcome.stages.values()), default=t0)
    wall = tr.timings.get("total_s") or (end - t0)
    stages = {}
    for name in STAGES:
        s = outcome.stages.get(name)
        if s is None:
            continue
        occ = [o for _, o in s.get("occupancy", []) if o >= 0]
        busy = s["busy_s"]
        stages[name] = {
            "items": s["items"],
            "units": s["units"],
            "unit": UNIT[name],
            "life_s": round(s["life_s"], 4),
            "busy_s": round(busy, 4),
            "starved_s": round(s["starved_s"], 4),
            "blocked_s": round(s["blocked_s"], 4),
            "throughput_per_s": round(s["items"] / busy, 2) if busy > 0 else None,
            "ring_mean": round(statistics.fmean(occ), 2) if occ else None,
            "ring_max": max(occ) if occ else None,
            "start_s": round(s["t_start"] - t0, 4),
            "end_s": round(s["t_end"] - t0, 4),
        }
    model = outcome.model or {}
    ready = model.get("t_ready")
    return {
        "audio_s": tr.duration,
        "wall_s": round(wall, 4),
        "rtfx": round(tr.duration / wall, 2) if wall > 0 else None,
        "model_load_s": round(model["load_s"], 3) if "load_s" in model else None,
        "model_waited_s": round(max(0.0, ready - t0), 3) if ready else None,
        "first_result_s": round(outcome.t_first_result - t0, 4) if outcome.t_first_result else None,
        "windows": len(outcome.windows),
        "stages": stages,
    }


def format_profile(p: dict) -> str:
    """The profile as a table for a terminal (stderr)."""
    lines = [
        f"audio {p['audio_s']:.1f} s  wall {p['wall_s']:.2f} s  {p['rtfx'] or 0:.1f}x real time  "
        f"windows {p['windows']}  model load {_f(p['model_load_s'])} s  "
        f"first result {_f(p['first_result_s'])} s",
        f"{'stage':<8}{'items':>8}{'busy s':>10}{'starved s':>11}{'blocked s':>11}"
        f"{'items/s':>10}{'ring mean':>11}{'ring max':>10}",
    ]
    for name, s in p["stages"].items():
        lines.append(
            f"{name:<8}{s['items']:>8}{s['busy_s']:>10.3f}{s['starved_s']:>11.3f}{s['blocked_s']:>11.3f}"
            f"{_f(s['throughput_per_s'], 1):>10}{_f(s['ring_mean'], 1):>11}{_f(s['ring_max'], 0):>10}"
        )
    busiest = max(p["stages"].items(), key=lambda kv: kv[1]["busy_s"], default=None)
    if busiest:
        ratio = p["wall_s"] / busiest[1]["busy_s"] if busiest[1]["busy_s"] > 0 else float("nan")
        lines.append(f"busiest stage: {busiest[0]} ({busiest[1]['busy_s']:.2f} s busy); "
                     f"wall / busiest = {ratio:.2f}")
    return "\n".join(lines) + "\n"


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
