"""scripts/gpu_suite.sh --dry-run: the GPU suite's steps on the CPU with small sizes, so the
suite a lent GPU machine runs cannot rot between loans (issue 9)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHON=sys.executable)
    r = subprocess.run(["bash", "scripts/gpu_suite.sh", "--dry-run", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu (dry run)"
    names = [run["name"] for run in summary["runs"]]
    assert names[0] == "synthetic_test" and "tiny_en_reading" in names
    reading = next(run for run in summary["runs"] if run["name"] == "tiny_en_reading")
    assert ("token_equality" in names) == ("skipped" not in reading), names
    for run in summary["runs"]:
        assert "error" not in run, run
        if run["name"] == "token_equality":  # float32 on the CPU: generate's tokens exactly
            assert run["dtype"] == "float32" and len(run["lines"]) == 4, run
            assert all(" 0 of " in ln for ln in run["lines"][1:]), run
            continue
        if "skipped" in run:
            assert run["name"] == "tiny_en_reading" and run["skipped"], run
            continue
        assert run["audio_s"] > 0 and run["wall_s"] > 0 and run["baseline_wall_s"] > 0, run
        assert (out / f"{run['name']}.json").is_file() and (out / f"{run['name']}.png").is_file()
    assert summary["runs"][0]["audio_s"] == 60.0
    # A lent GPU machine sends back at most 8 files: the suite writes no more.
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and "traces.tar.gz" in files, files
