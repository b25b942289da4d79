"""scripts/memory_profile.py: peak memory of a run, and the infer stage's peak in each
quarter of the job (a warm-up levels off, a leak climbs to the end)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "memory_profile.py"


def _script():
    spec = importlib.util.spec_from_file_location("memory_profile", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_by_quarter_takes_each_quarters_peak():
    by_quarter = _script().by_quarter
    mib = 2**20
    # samples over [10, 14]: one quarter a second; the last quarter has none
    series = [(10.0, 5 * mib), (10.5, 7 * mib), (11.2, 6 * mib), (12.9, 9 * mib), (12.95, 8 * mib)]
    assert by_quarter(series, 10.0, 14.0) == [7.0, 6.0, 9.0, None]
    # a sample at the very end, or a little past it, is the last quarter's
    assert by_quarter([(14.0, mib), (14.2, 2 * mib)], 10.0, 14.0) == [None, None, None, 2.0]
    assert by_quarter([], 0.0, 1.0) == [None] * 4


def test_a_short_run_reports_every_figure(tmp_path):
    out = tmp_path / "rows.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(SCRIPT), "--minutes", "0.5", "--json", str(out)], capture_output=True,
                       text=True, timeout=300, env=env, cwd=ROOT)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = json.loads(out.read_text())
    assert row["minutes"] == 0.5 and abs(row["audio_s"] - 30) < 1 and row["windows"] >= 1, row
    assert row["peak_by_process_mib"]["wsp-infer"] > 0 and row["peak_pss_mib"] >= row["peak_by_process_mib"]["wsp-infer"]
    quarters = row["infer_peak_by_quarter_mib"]
    assert len(quarters) == 4 and any(q is not None for q in quarters), quarters
    assert max(q for q in quarters if q is not None) <= row["peak_by_process_mib"]["wsp-infer"]
    assert "infer stage's peak in each quarter of the job" in r.stdout
