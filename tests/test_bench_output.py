"""What bench.py and the profile show (issue 10, item 12): the profile names its units,
the plot's legend matches what is drawn, every capacity line is labelled, and the ring
lines reach the end of the run."""

from __future__ import annotations

from pipeline.profile import format_profile, profile_from_outcome
from pipeline.trace import plot_figure, ring_series
from tests.test_profile import _fake_outcome


def test_profile_names_its_units():
    table = format_profile(profile_from_outcome(_fake_outcome(True)))
    head = table.splitlines()[1]
    assert "items" not in table, table
    assert "work" in head and "rate" in head
    rows = {ln.split()[0]: ln for ln in table.splitlines()[2:6]}
    assert " MB " in rows["download"] and "MB/s" in rows["download"]
    assert "s audio" in rows["decode"]
    assert "3 windows" in rows["chunk"] and "windows/s" in rows["infer"]


def test_ring_lines_reach_the_end_of_the_run():
    out = _fake_outcome(True)
    run_end = max(s["t_end"] for s in out.stages.values()) - out.t_submit
    series = ring_series(out, {"bytes": 16, "pcm": 8, "window": 16})
    assert [s["ring"] for s in series] == ["bytes", "pcm", "window"]
    for s in series:
        assert s["xs"][-1] == run_end and s["ys"][-1] == s["ys"][-2]  # held, not dropped
    assert series[2]["capacity"] == 16


def test_plot_legend_matches_what_is_drawn():
    from matplotlib.lines import Line2D

    fig = plot_figure(_fake_outcome(True), title="t", ring_slots={"bytes": 16, "pcm": 8, "window": 16})
    top, bottom = fig.axes
    legend = top.get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["busy", "starved", "blocked", "first result"], labels
    first = legend.legend_handles[-1] if hasattr(legend, "legend_handles") else legend.legendHandles[-1]
    assert isinstance(first, Line2D) and first.get_linestyle() == ":"  # drawn as a dotted line
    low = [t.get_text() for t in bottom.get_legend().get_texts()]
    for ring, n in (("bytes", 16), ("pcm", 8), ("window", 16)):
        assert f"{ring} ring" in low and f"{ring} ring capacity ({n} slots)" in low, low
    import matplotlib.pyplot as plt

    plt.close(fig)
