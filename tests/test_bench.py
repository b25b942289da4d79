"""bench.py end to end (issue 4): a short MP3 from a loopback URL, a tiny checkpoint, our
pipeline against the transformers pipeline, and the JSON / trace / PNG it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from pipeline.synthetic import ARCHS
from tests.httpserver import LoopbackServer
from tests.media import convert, noise, tone, write_wav
from tests.test_profile import check_trace

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 4

# Published dimensions (openai/whisper ModelDimensions; the HF config.json files):
# d_model, encoder/decoder layers, heads, mel bins, vocabulary.
PUBLISHED = {
    "tiny": (384, 4, 4, 6, 80, 51865),
    "base": (512, 6, 6, 8, 80, 51865),
    "small": (768, 12, 12, 12, 80, 51865),
    "medium": (1024, 24, 24, 16, 80, 51865),
    "large-v3": (1280, 32, 32, 20, 128, 51866),
    "large-v3-turbo": (1280, 32, 4, 20, 128, 51866),
    "test": (64, 2, 2, 2, 80, 51865),  # the tests' own tiny layout
}


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def run_bench(*args, timeout=240, input=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "bench.py"), *map(str, args)],
        capture_output=True, text=input is None, timeout=timeout, env=_env(), cwd=ROOT, input=input,
    )  # fmt: skip


@pytest.fixture(scope="module")
def mp3_dir(tmp_path_factory):
    """75 s MP3 (tone over noise, 44.1 kHz stereo like a real file): 3 windows."""
    d = tmp_path_factory.mktemp("bench-audio")
    x = tone(330.0, 75.0) * 0.5 + noise(75.0, amp=0.05)
    wav = write_wav(d / "a.wav", x)
    convert(wav, d / "a.mp3", "-ar", "44100", "-ac", "2", "-b:a", "128k")
    return d


@pytest.fixture(scope="module")
def bench_run(mp3_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    paths = {k: out / f"b.{k}" for k in ("json", "trace", "png")}
    with LoopbackServer(mp3_dir) as srv:
        r = run_bench(
            srv.url("a.mp3"), "--model", tiny_model_dir, "--tokens-per-window", TOKENS,
            "--batch-size", 2, "--baseline", "--json", paths["json"], "--trace", paths["trace"],
            "--plot", paths["png"],
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r, paths


def test_bench_report_and_json(bench_run, mp3_dir):
    r, paths = bench_run
    for word in ("download", "decode", "chunk", "infer", "wall", "real time", "baseline", "ours is"):
        assert word in r.stdout, word
    doc = json.loads(paths["json"].read_text())
    for key in ("audio_s", "wall_s", "rtfx", "model_load_s", "first_result_s", "stages", "baseline"):
        assert doc[key] is not None, key
    assert doc["audio_s"] == pytest.approx(75.0, abs=0.2)
    assert doc["rtfx"] == pytest.approx(doc["audio_s"] / doc["wall_s"], rel=0.01)
    assert list(doc["stages"]) == ["download", "decode", "chunk", "infer"]
    for name, s in doc["stages"].items():
        for key in ("busy_s", "starved_s", "blocked_s", "items", "throughput_per_s", "ring_mean", "ring_max"):
            assert key in s, (name, key)
        assert s["items"] > 0, name
    assert doc["stages"]["chunk"]["items"] == doc["windows"] == 3
    assert doc["stages"]["download"]["units"] == (mp3_dir / "a.mp3").stat().st_size  # bytes
    b = doc["baseline"]
    for key in ("wall_s", "rtfx", "download_s", "decode_s", "asr_s", "model_load_s", "windows"):
        assert b[key] is not None, key
    assert b["generate_kwargs"]["min_new_tokens"] == b["generate_kwargs"]["max_new_tokens"] == TOKENS
    assert doc["speedup_vs_baseline"] == pytest.approx(b["wall_s"] / doc["wall_s"], rel=0.01)


def test_bench_bookkeeping_adds_up(bench_run):
    """busy + starved + blocked = the stage's life, for every stage of a real run."""
    doc = json.loads(bench_run[1]["json"].read_text())
    for name, s in doc["stages"].items():
        total = s["busy_s"] + s["starved_s"] + s["blocked_s"]
        assert total == pytest.approx(s["life_s"], abs=0.005), name
        assert s["start_s"] >= 0 and s["end_s"] <= doc["wall_s"] + 0.05, name
    # The wall time covers every stage's life.
    assert doc["wall_s"] >= max(s["life_s"] for s in doc["stages"].values()) - 0.01


def test_tokens_per_window_is_exact(bench_run):
    doc = json.loads(bench_run[1]["json"].read_text())
    assert doc["tokens_per_window"] == TOKENS
    assert doc["tokens_per_window_seen"] == {"min": TOKENS, "max": TOKENS}
    assert doc["tokens"] == TOKENS * doc["windows"]
    # The baseline's sequences: <|startoftranscript|><|lang|><|transcribe|> + exactly N.
    assert doc["baseline"]["sequence_len_max"] == 3 + TOKENS
    assert doc["baseline"]["windows"] >= doc["windows"]  # its 5 s strides make more windows


def test_trace_and_plot_files(bench_run):
    paths = bench_run[1]
    doc = json.loads(paths["trace"].read_text())
    check_trace(doc)
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X" and e["name"] == "busy"]
    job = next(e for e in doc["traceEvents"] if e["name"] == "job")
    assert max(e["ts"] + e["dur"] for e in xs) <= job["dur"] * 1.05 + 50_000  # microseconds
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_synthetic_config_has_the_real_dims(arch):
    """bench --synthetic builds from this description (no weights made here)."""
    d = bench.synthetic_description(arch)
    dims = (d["d_model"], d["encoder_layers"], d["decoder_layers"], d["encoder_attention_heads"],
            d["num_mel_bins"], d["vocab_size"])  # fmt: skip
    assert dims == PUBLISHED[arch]
    assert d["decoder_attention_heads"] == d["encoder_attention_heads"]
    assert d["encoder_ffn_dim"] == d["decoder_ffn_dim"] == 4 * d["d_model"] or arch == "test"
    assert d["max_source_positions"] == 1500 and d["max_target_positions"] == 448
    # Real token ids: <|endoftext|> 50257, <|startoftranscript|> 50258.
    assert d["eos_token_id"] == 50257 and d["decoder_start_token_id"] == 50258


def test_synthetic_show_config_cli():
    r = run_bench("--synthetic", "large-v3-turbo", "--show-config", timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["decoder_layers"], d["num_mel_bins"], d["vocab_size"]) == (4, 128, 51866)


def test_synthetic_run_from_stdin_with_runs_and_overhead(tmp_path):
    """--synthetic builds a checkpoint on the fly; SOURCE "-" is read once and reused by
    every run; --runs gives min/median; --overhead times runs with profiling off."""
    wav = write_wav(tmp_path / "s.wav", noise(40.0))
    out = tmp_path / "s.json"
    r = run_bench("-", "--synthetic", "test", "--tokens-per-window", 2, "--batch-size", 2,
                  "--runs", 2, "--overhead", "--no-warmup", "--json", out,
                  input=wav.read_bytes())  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["synthetic"]["arch"] == "test" and doc["runs"] == 2 and len(doc["run_profiles"]) == 2
    assert doc["summary"]["wall_s"]["min"] <= doc["summary"]["wall_s"]["median"]
    oh = doc["profiling_overhead"]
    assert len(oh["wall_s_unprofiled"]) == 2 and oh["ratio"] > 0
    assert doc["tokens_per_window_seen"] == {"min": 2, "max": 2}
    assert b"profiling overhead" in r.stdout


def test_bad_arguments_fail_with_one_line(tmp_path):
    r = run_bench(tmp_path / "missing.mp3", "--model", "x", timeout=60)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error:")
    r = run_bench("x.mp3", "--tokens-per-window", 0, timeout=60)
    assert r.returncode == 2 and "tokens_per_window" in r.stderr
