"""bench.py end to end (issue 4): a short MP3 from a loopback URL, a tiny checkpoint, our
pipeline against the transformers pipeline, and the JSON / trace / PNG it writes; accuracy
(issue 8): --reference and the chunked / sequential / faster-whisper baselines on the tiny
random checkpoint, and a short real-weights check with tiny.en where it resolves."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bench
from pipeline.synthetic import ARCHS
from tests.httpserver import LoopbackServer
from tests.media import babble, convert, noise, speech, tone, write_wav
from tests.test_profile import check_trace

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 4
TABLE_HEAD = ("| decoder | WER | sub/del/ins | longest lost run | longest repeat | wall s | rtfx "
              "| ratio vs ours |")  # fmt: skip
REFERENCE = "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step."
SCORE_KEYS = ("wer", "substitutions", "deletions", "insertions", "hits", "ref_words", "hyp_words",
              "longest_lost_run", "longest_error_run", "longest_repeat")  # fmt: skip

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
    x = tone(330.0, 75.0) * 0.2 + babble(75.0, amp=0.3)
    wav = write_wav(d / "a.wav", x)
    convert(wav, d / "a.mp3", "-ar", "44100", "-ac", "2", "-b:a", "128k")
    return d


@pytest.fixture(scope="module")
def bench_run(mp3_dir, tiny_model_dir, ct2_model_dir, tmp_path_factory):
    """--reference with every baseline (chunked pipeline, sequential long-form,
    faster-whisper on the same weights), from a URL, with a trace and a plot: one run that
    the tests below read (each bench run costs a model load per decoder)."""
    out = tmp_path_factory.mktemp("bench-out")
    paths = {k: out / f"b.{k}" for k in ("json", "trace", "png")}
    (out / "ref.txt").write_text(REFERENCE)
    with LoopbackServer(mp3_dir) as srv:
        r = run_bench(
            srv.url("a.mp3"), "--model", tiny_model_dir, "--tokens-per-window", TOKENS,
            "--batch-size", 2, "--reference", out / "ref.txt", "--json", paths["json"],
            "--baselines", "faster-whisper,sequential,chunked", "--faster-whisper-model", ct2_model_dir,
            "--trace", paths["trace"], "--plot", paths["png"],
        )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r, paths


def test_bench_is_quiet_and_says_where_it_wrote(bench_run):
    """No INFO log lines without -v (issue 10); each file written is named on stdout."""
    r, paths = bench_run
    assert " INFO " not in r.stderr, r.stderr[-2000:]
    for kind, what in (("json", "JSON"), ("trace", "trace"), ("png", "plot")):
        line = next((ln for ln in r.stdout.splitlines() if str(paths[kind]) in ln), None)
        assert line and line.startswith("wrote ") and what in line, (kind, r.stdout[-1500:])


def test_bench_report_and_json(bench_run, mp3_dir):
    r, paths = bench_run
    for word in ("download", "decode", "chunk", "infer", "wall", "real time", "baseline", "ours is"):
        assert word in r.stdout, word
    doc = json.loads(paths["json"].read_text())
    for key in ("audio_s", "wall_s", "rtfx", "model_load_s", "first_result_s", "stages", "baseline"):
        assert doc[key] is not None, key
    assert doc["audio_s"] == pytest.approx(75.0, abs=0.2)
    assert len(doc["load_average_at_start"]) == 3  # a busy machine is visible in the figures
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
    wav = write_wav(tmp_path / "s.wav", babble(40.0))
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


def test_interleaved_rounds_alternate_and_report_each_rounds_ratio(tmp_path):
    """--interleave: one run of each decoder per round, every decoder loaded once; the JSON
    gives each round's wall-time ratio (the baseline's run over ours in the same round)."""
    wav = write_wav(tmp_path / "s.wav", babble(40.0))
    out = tmp_path / "s.json"
    r = run_bench(wav, "--synthetic", "test", "--tokens-per-window", 2, "--batch-size", 2, "--runs", 3,
                  "--interleave", "--baselines", "plain,chunked", "--no-warmup", "--json", out)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["interleave"] is True and len(doc["run_profiles"]) == 3
    ours = [p["wall_s"] for p in doc["run_profiles"]]
    for name in ("plain", "chunked"):
        theirs = [run["wall_s"] for run in doc["baselines"][name]["runs"]]
        got = doc["ratio_by_round"][name]
        assert got["ratios"] == pytest.approx([t / o for t, o in zip(theirs, ours)], rel=0.01)
        assert got["median"] == sorted(got["ratios"])[1]
    assert "round by round" in r.stdout


class _Decoder:
    """A fake rounds generator that logs its steps; ``fail_at``: raise at that run."""

    def __init__(self, name, log, runs, fail_at=None):
        self.name, self.log, self.runs, self.fail_at, self.closed = name, log, runs, fail_at, False

    def rounds(self):
        try:
            self.log.append(f"{self.name} start")
            for i in range(self.runs):
                if i == self.fail_at:
                    raise RuntimeError(f"{self.name} broke")
                self.log.append(f"{self.name} {i}")
                yield
            return {"name": self.name, "runs": self.runs}
        finally:
            self.closed = True


def test_run_rounds_order_results_and_cleanup():
    log = []
    a, b, c = (_Decoder(n, log, 2) for n in "abc")
    starts = [(d.name, d.rounds) for d in (a, b, c)]
    got = bench.run_rounds(starts, 2, interleave=False)
    assert log == ["a start", "a 0", "a 1", "b start", "b 0", "b 1", "c start", "c 0", "c 1"]
    assert list(got) == ["a", "b", "c"] and got["b"] == {"name": "b", "runs": 2}

    log.clear()
    skipped = ("s", lambda: bench._finished({"skipped": "why"}))
    got = bench.run_rounds([starts[0], skipped, *starts[1:]], 2, interleave=True)
    # each decoder starts at its first step; odd rounds run in reverse order
    assert log == ["a start", "a 0", "b start", "b 0", "c start", "c 0", "c 1", "b 1", "a 1"]
    assert list(got) == ["a", "s", "b", "c"] and got["s"] == {"skipped": "why"}

    # a decoder that fails: the error reaches the caller, and every other one is closed
    log.clear()
    a, b, c = _Decoder("a", log, 2), _Decoder("b", log, 2, fail_at=1), _Decoder("c", log, 2)
    with pytest.raises(RuntimeError, match="b broke"):
        bench.run_rounds([(d.name, d.rounds) for d in (a, b, c)], 2, interleave=True)
    assert a.closed and c.closed and log == ["a start", "a 0", "b start", "b 0", "c start", "c 0", "c 1"]

    # a decoder with more runs than asked is an error, not a silent truncation
    with pytest.raises(RuntimeError, match="more than 1"):
        bench.run_rounds([("x", _Decoder("x", [], 2).rounds)], 1, interleave=True)


def test_bad_arguments_fail_with_one_line(tmp_path):
    r = run_bench(tmp_path / "missing.mp3", "--model", "x", timeout=60)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error:")
    r = run_bench("x.mp3", "--tokens-per-window", 0, timeout=60)
    assert r.returncode == 2 and "tokens_per_window" in r.stderr


def test_bad_accuracy_arguments_fail_with_one_line(tmp_path):
    r = run_bench("x.mp3", "--baselines", "chunked,bogus", timeout=60)
    assert r.returncode == 2 and "--baselines" in r.stderr.strip().splitlines()[-1]
    wav = write_wav(tmp_path / "a.wav", noise(1.0))
    r = run_bench(wav, "--reference", tmp_path / "missing.txt", timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: cannot read --reference")
    # A reference with no words scored 1800% after a whole run, with exit code 0.
    (tmp_path / "empty.txt").write_text("\n  \n")
    r = run_bench(wav, "--model", "tiny.en", "--reference", tmp_path / "empty.txt", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == f"error: --reference {tmp_path / 'empty.txt'} has no words"


def test_outputs_and_model_are_checked_before_the_run(tmp_path):
    """A bad --json path failed after the whole bench (its figures lost); an unknown hub id
    failed after 9 s in the infer stage, not in the CLI's one line."""
    wav = write_wav(tmp_path / "a.wav", noise(1.0))
    for flag in ("--json", "--trace", "--plot"):
        r = run_bench(wav, "--model", "tiny.en", flag, wav / "x.json", timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"error: {flag} {wav / 'x.json'}: not a file in a writable folder"
    r = run_bench(wav, "--model", "openai/whisper-nonexistent", timeout=60)
    assert r.returncode == 2 and "not in the local hub cache" in r.stderr.strip().splitlines()[-1], r.stderr


def test_errors_name_the_input(tmp_path):
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    r = run_bench(empty, "--model", "tiny.en", "--no-warmup", timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == f"error: {empty} is empty (no bytes)", r.stderr


# ------------------------------------------------------------------------- accuracy (issue 8)

def _table(stdout: str) -> dict[str, list[str]]:
    """decoder -> its cells, from the Markdown accuracy table (header checked exactly)."""
    lines = stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("| decoder "))
    assert " ".join(lines[i].split()) == TABLE_HEAD
    assert set(lines[i + 1]) <= {"|", "-"}
    rows = {}
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def _check_scored(name, e, doc):
    for key in SCORE_KEYS:
        assert key in e, (name, key)
    assert e["hits"] + e["substitutions"] + e["deletions"] == e["ref_words"] == doc["reference"]["words"]
    assert e["hits"] + e["substitutions"] + e["insertions"] == e["hyp_words"]
    assert e["ratio_vs_ours"] == pytest.approx(e["wall_s"] / doc["accuracy"]["ours"]["wall_s"], rel=0.01)
    assert isinstance(e["text"], str) and e["method"]


@pytest.fixture(scope="module")
def ct2_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny random checkpoint in the CTranslate2 layout (the same weights) for the
    faster-whisper baseline, or None where ctranslate2 / faster-whisper are missing."""
    pytest.importorskip("faster_whisper")
    converters = pytest.importorskip("ctranslate2.converters")
    d = tmp_path_factory.mktemp("tiny-ct2") / "ct2"
    converters.TransformersConverter(str(tiny_model_dir)).convert(str(d))
    shutil.copyfile(Path(tiny_model_dir) / "tokenizer.json", d / "tokenizer.json")  # else: the hub
    return d


def test_reference_and_every_baseline(bench_run, ct2_model_dir):
    """--reference with all three baselines on the tiny random checkpoint: one table, one
    JSON dict per decoder, each decoder greedy with the same weights. (That ``--baseline``
    alone means chunked, plus sequential with a reference: test_baseline_selection.)"""
    r, paths = bench_run
    rows = _table(r.stdout)
    assert list(rows) == ["ours", "chunked", "sequential", "faster-whisper"]
    doc = json.loads(paths["json"].read_text())
    assert doc["reference"]["path"].endswith("ref.txt")
    assert doc["reference"]["words"] == 20  # "a thousand" -> "a 1000"
    assert list(doc["accuracy"]) == list(rows)
    for name, e in doc["accuracy"].items():
        _check_scored(name, e, doc)
        cells = rows[name]
        assert cells[0] == f"{100 * e['wer']:.1f}%"
        assert cells[1] == f"{e['substitutions']}/{e['deletions']}/{e['insertions']}"
        assert cells[2:4] == [str(e["longest_lost_run"]), str(e["longest_repeat"])]
        assert cells[4:] == [f"{e['wall_s']:.2f}", f"{e['rtfx']:.1f}", f"{e['ratio_vs_ours']:.2f}"]
    assert doc["accuracy"]["ours"]["wall_s"] == doc["wall_s"] and rows["ours"][-1] == "1.00"
    # The baselines' details: greedy, same weights, timed the same way; "baseline" is chunked.
    b = doc["baselines"]
    assert set(b) == {"chunked", "sequential", "faster-whisper"} and doc["baseline"] == b["chunked"]
    for name, e in b.items():
        assert e["audio_s"] == pytest.approx(75.0, abs=0.2), name
        assert e["wall_s"] >= e["asr_s"] > 0 and "text" not in e, name
    seq = b["sequential"]["generate_kwargs"]
    # transformers' greedy long-form defaults: no temperature (so no fallback), no prompt.
    assert seq == {"return_timestamps": True, "num_beams": 1, "do_sample": False,
                   "condition_on_prev_tokens": False, "task": "transcribe",
                   "min_new_tokens": TOKENS, "max_new_tokens": TOKENS}  # fmt: skip
    fw = b["faster-whisper"]["transcribe_kwargs"]
    assert (fw["beam_size"], fw["best_of"], fw["temperature"], fw["condition_on_previous_text"],
            fw["vad_filter"]) == (1, 1, [0.0], False, False)  # fmt: skip
    assert str(ct2_model_dir) in b["faster-whisper"]["method"]


def test_baseline_selection():
    parse = bench.build_parser().parse_args
    assert bench.selected_baselines(parse(["a.wav"])) == []
    assert bench.selected_baselines(parse(["a.wav", "--baseline"])) == ["chunked"]
    assert bench.selected_baselines(parse(["a.wav", "--baseline", "--reference", "r.txt"])) == ["chunked", "sequential"]
    got = bench.selected_baselines(parse(["a.wav", "--baselines", " faster-whisper, chunked"]))
    assert got == ["chunked", "faster-whisper"]  # always run in BASELINES order
    for bad in ("", "chunked,beam", ","):
        with pytest.raises(ValueError):
            bench.selected_baselines(parse(["a.wav", "--baselines", bad]))


def test_faster_whisper_source(tmp_path, tiny_model_dir):
    """Where faster-whisper's CTranslate2 directory comes from, and why it is skipped."""
    parse = bench.build_parser().parse_args
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"\0")
    (ct2 / "config.json").write_text("{}")
    args = parse(["a.wav"])
    assert bench.ct2_source(args, str(ct2)) == (str(ct2), "--model is a CTranslate2 directory")
    d, why = bench.ct2_source(args, str(tiny_model_dir))  # a transformers checkpoint
    assert d is None and "--faster-whisper-model" in why
    assert bench.ct2_source(args, None)[0] is None
    assert bench.ct2_source(parse(["a.wav", "--faster-whisper-model", str(ct2)]), "x")[0] == str(ct2)
    assert bench.ct2_source(parse(["a.wav", "--faster-whisper-model", str(tmp_path)]), "x")[0] is None
    if importlib.util.find_spec("faster_whisper") is not None:
        assert "tokenizer.json" in bench.faster_whisper_unavailable(str(ct2), "")
        (ct2 / "tokenizer.json").write_text("{}")
        assert "vocabulary" in bench.faster_whisper_unavailable(str(ct2), "")
        (ct2 / "vocabulary.txt").write_text("a\n")
        assert bench.faster_whisper_unavailable(str(ct2), "") is None
        assert bench.faster_whisper_unavailable(None, "because") == "because"


def test_accuracy_table_format():
    rows = {
        "ours": {"wall_s": 2.0, "rtfx": 30.0, "ratio_vs_ours": 1.0, "wer": 0.211, "substitutions": 188,
                 "deletions": 101, "insertions": 51, "longest_lost_run": 39, "longest_repeat": 2},
        "faster-whisper": {"skipped": "faster_whisper is not importable"},
    }  # fmt: skip
    text = bench.format_accuracy(rows, {"path": "r.txt", "words": 1610})
    lines = text.splitlines()
    assert lines[0].startswith("accuracy against r.txt (1610 words after normalising")
    assert " ".join(lines[1].split()) == TABLE_HEAD
    assert " ".join(lines[3].split()) == "| ours | 21.1% | 188/101/51 | 39 | 2 | 2.00 | 30.0 | 1.00 |"
    assert " ".join(lines[4].split()) == "| faster-whisper | - | - | - | - | - | - | - |"
    assert "faster-whisper skipped: faster_whisper is not importable" in lines
    assert len({len(line) for line in lines[1:5]}) == 1  # columns line up


def _real_tiny_en():
    """The converted real tiny.en checkpoint, or a reason to skip."""
    if importlib.util.find_spec("pipeline.weights") is None:
        return None, "pipeline.weights is not there"
    if shutil.which("espeak-ng") is None:
        return None, "espeak-ng is not installed"
    from pipeline.weights import resolve_model

    try:
        return resolve_model("tiny.en"), ""
    except Exception as exc:  # noqa: BLE001 - not installed here: skip, with the reason
        return None, f"tiny.en does not resolve: {exc}"


def test_real_tiny_en_sane_wer(tmp_path):
    """Real weights: two espeak-ng sentences; ours and sequential long-form (and
    faster-whisper on the pip-installed CTranslate2 folder) all get most words right."""
    model, why = _real_tiny_en()
    if model is None:
        pytest.skip(why)
    text = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles "
            "begins with a single step, and every step counts.")  # fmt: skip
    speech(tmp_path / "s.wav", text)
    (tmp_path / "ref.txt").write_text(text)
    out = tmp_path / "real.json"
    names = "sequential,faster-whisper" if importlib.util.find_spec("faster_whisper") else "sequential"
    r = run_bench(tmp_path / "s.wav", "--model", "tiny.en", "--reference", tmp_path / "ref.txt",
                  "--baselines", names, "--no-warmup", "--language", "en", "--json", out, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["model_spec"] == "tiny.en"
    for name, e in doc["accuracy"].items():
        assert "skipped" not in e, (name, e)
        _check_scored(name, e, doc)
        # tiny.en on espeak-ng: ~15-30% here (e.g. "roundfoch stumps"), never a lost sentence.
        assert e["wer"] <= 0.4, (name, e["wer"], e["text"])
        assert e["longest_lost_run"] <= 3 and e["longest_repeat"] <= 2, (name, e["text"])
        assert "single step" in e["text"].lower(), (name, e["text"])
