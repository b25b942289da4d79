"""Synthetic (random-weight) Whisper checkpoints: configs, build, load, tokenizer."""

import random
import time

import pytest
import torch

from pipeline.synthetic import (
    ARCHS,
    build_checkpoint,
    special_ids,
    synthetic_config,
    synthetic_generation_config,
)

# Published dimensions (HF config.json of openai/whisper-*), written out independently of
# ARCHS: (d_model, enc layers, dec layers, heads, ffn, mel bins, vocab, parameters).
PUBLISHED = {
    "tiny": (384, 4, 4, 6, 1536, 80, 51865, 37_760_640),
    "base": (512, 6, 6, 8, 2048, 80, 51865, 72_593_920),
    "small": (768, 12, 12, 12, 3072, 80, 51865, 241_734_912),
    "medium": (1024, 24, 24, 16, 4096, 80, 51865, 763_857_920),
    "large-v3": (1280, 32, 32, 20, 5120, 128, 51866, 1_543_490_560),
    "large-v3-turbo": (1280, 32, 4, 20, 5120, 128, 51866, 808_878_080),
    "test": (64, 2, 2, 2, 128, 80, 51865, None),
}
V3 = {"large-v3", "large-v3-turbo"}


def test_every_arch_is_checked():
    assert set(ARCHS) == set(PUBLISHED)


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_config_dimensions(arch):
    d, enc, dec, heads, ffn, mels, vocab, n_params = PUBLISHED[arch]
    c = synthetic_config(arch)
    assert (c.d_model, c.encoder_layers, c.decoder_layers) == (d, enc, dec)
    assert (c.encoder_attention_heads, c.decoder_attention_heads) == (heads, heads)
    assert (c.encoder_ffn_dim, c.decoder_ffn_dim) == (ffn, ffn)
    assert (c.num_mel_bins, c.vocab_size) == (mels, vocab)
    assert (c.max_source_positions, c.max_target_positions) == (1500, 448)
    if n_params is not None:
        from transformers import WhisperForConditionalGeneration

        with torch.device("meta"):  # shapes only: no memory, no init time
            model = WhisperForConditionalGeneration(c)
        assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_special_token_ids(arch):
    v3 = arch in V3
    ids = special_ids("v3" if v3 else "v2")
    c, g = synthetic_config(arch), synthetic_generation_config(arch)
    assert ids["<|endoftext|>"] == 50257 == c.eos_token_id == g.eos_token_id
    assert ids["<|startoftranscript|>"] == 50258 == c.decoder_start_token_id
    assert ids["<|en|>"] == 50259
    n_lang = 100 if v3 else 99
    assert len(g.lang_to_id) == n_lang
    assert sorted(g.lang_to_id.values()) == list(range(50259, 50259 + n_lang))
    assert ("<|yue|>" in g.lang_to_id) == v3
    notimestamps = 50364 if v3 else 50363
    assert g.no_timestamps_token_id == ids["<|notimestamps|>"] == notimestamps
    assert g.task_to_id == {"translate": notimestamps - 5, "transcribe": notimestamps - 4}
    assert g.prev_sot_token_id == notimestamps - 2
    assert ("<|nospeech|>" if v3 else "<|nocaptions|>") in ids
    # 1501 timestamps after <|notimestamps|> fill the vocabulary exactly.
    assert notimestamps + 1 + 1501 == c.vocab_size
    assert g.max_length == 448 and g.is_multilingual
    assert all(
        0 <= l < c.decoder_layers and 0 <= h < c.decoder_attention_heads
        for l, h in g.alignment_heads
    )
    assert 220 in g.begin_suppress_tokens and 50257 in g.begin_suppress_tokens


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        synthetic_config("huge")


def test_build_and_load(tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor, pipeline

    t0 = time.perf_counter()
    d = build_checkpoint(tmp_path / "ck", "test", seed=3)
    assert time.perf_counter() - t0 < 5
    t0 = time.perf_counter()
    model = WhisperForConditionalGeneration.from_pretrained(d)
    processor = WhisperProcessor.from_pretrained(d)
    assert time.perf_counter() - t0 < 5
    assert model.config.d_model == 64
    assert processor.feature_extractor.feature_size == 80
    assert len(processor.tokenizer) == 51865
    assert model.generation_config.no_timestamps_token_id == 50363

    asr = pipeline("automatic-speech-recognition", model=str(d))
    out = asr(
        torch.zeros(16000).numpy(),
        return_timestamps=True,
        generate_kwargs={"num_beams": 1, "max_new_tokens": 8, "force_unique_generate_call": True},
    )
    assert isinstance(out["text"], str) and "chunks" in out


def test_seed_reproducible(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    a = load_file(tiny_model_dir / "model.safetensors")
    b = load_file(build_checkpoint(tmp_path / "same", "test") / "model.safetensors")
    c = load_file(build_checkpoint(tmp_path / "other", "test", seed=1) / "model.safetensors")
    key = "model.decoder.layers.0.fc1.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


def test_float16_weights(tmp_path):
    from safetensors.torch import load_file

    w = load_file(
        build_checkpoint(tmp_path / "h", "test", dtype=torch.float16) / "model.safetensors"
    )
    assert {t.dtype for t in w.values()} == {torch.float16}


@pytest.fixture(scope="module")
def tokenizers(tiny_model_dir):
    from transformers import AutoTokenizer, WhisperTokenizer

    fast = AutoTokenizer.from_pretrained(tiny_model_dir)
    slow = WhisperTokenizer.from_pretrained(tiny_model_dir)
    assert type(fast).__name__ == "WhisperTokenizerFast"
    return fast, slow


def test_tokenizer_round_trip(tokenizers):
    fast, slow = tokenizers
    text = " Hello, world! 123 the quick brown fox."
    for tok in (fast, slow):
        ids = tok(text, add_special_tokens=False).input_ids
        assert len(ids) == len(text.encode())  # byte-level, no merges
        assert ids[0] == 220  # " " in GPT-2 byte order
        assert tok.decode(ids) == text
        full = tok(text).input_ids  # <|startoftranscript|><|notimestamps|> ... <|endoftext|>
        assert full[:2] == [50258, 50363] and full[-1] == 50257
        assert tok.decode(full, skip_special_tokens=True) == text
    assert fast.convert_ids_to_tokens([50257, 50258, 50259, 50363, 50364, 51864]) == [
        "<|endoftext|>",
        "<|startoftranscript|>",
        "<|en|>",
        "<|notimestamps|>",
        "<|0.00|>",
        "<|30.00|>",
    ]


def test_timestamp_decoding(tokenizers):
    fast, slow = tokenizers
    ts = lambda s: 50364 + round(s / 0.02)  # noqa: E731
    hello = fast(" hello", add_special_tokens=False).input_ids
    world = fast(" world", add_special_tokens=False).input_ids
    ids = [50258, 50259, 50359, ts(0.0), *hello, ts(1.5), ts(1.5), *world, ts(2.4), 50257]
    for tok in (fast, slow):
        assert tok.decode(ids, skip_special_tokens=True) == " hello world"
        assert (
            tok.decode(ids, skip_special_tokens=True, decode_with_timestamps=True)
            == "<|0.00|> hello<|1.50|><|1.50|> world<|2.40|>"
        )
        offsets = tok.decode(ids, output_offsets=True)["offsets"]
        assert offsets == [
            {"text": " hello", "timestamp": (0.0, 1.5)},
            {"text": " world", "timestamp": (1.5, 2.4)},
        ]


def test_slow_and_fast_decode_alike(tokenizers):
    """Random ids (fillers are arbitrary byte pairs: invalid and split UTF-8) decode alike."""
    fast, slow = tokenizers
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(51865) for _ in range(rng.randrange(1, 40))]
        assert fast.decode(ids) == slow.decode(ids)
        assert fast.decode(ids, skip_special_tokens=True) == slow.decode(
            ids, skip_special_tokens=True
        )
    # A two-byte character split over two decodes becomes replacement characters in both.
    e_acute = fast("é", add_special_tokens=False).input_ids
    assert len(e_acute) == 2
    assert fast.decode(e_acute) == slow.decode(e_acute) == "é"
    assert fast.decode(e_acute[:1]) == slow.decode(e_acute[:1]) == "\ufffd"
