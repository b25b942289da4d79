"""Random-weight Whisper checkpoints, built offline.

Tests (arch ``"test"``) and the synthetic benchmark (``bench.py --synthetic ARCH``) need a
Whisper checkpoint on a machine that cannot download one. ``build_checkpoint`` writes a
directory that ``from_pretrained``, ``WhisperProcessor`` and the transformers ASR pipeline
load exactly like a real checkpoint: config, seeded random weights, a byte-level tokenizer
whose special and timestamp tokens sit at the real checkpoints' ids, a feature extractor
with the right number of mel bins, and a generation config with everything Whisper's
``generate`` reads (language/task ids, timestamp ids, suppress lists, alignment heads).

Random weights never emit end-of-text, so every window decodes to the length limit; the
benchmark forces a realistic length with ``min_new_tokens = max_new_tokens = N``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# Vocabulary layout shared by every real multilingual checkpoint: 50257 regular (BPE)
# tokens, then the special tokens, then 1501 timestamp tokens <|0.00|> .. <|30.00|>.
N_REGULAR_TOKENS = 50257
N_TIMESTAMPS = 1501  # 0.00 .. 30.00 s in steps of 0.02 s
TIME_PRECISION = 0.02

# Whisper's language codes in token order (openai/whisper tokenizer.py LANGUAGES): v1/v2
# checkpoints have the first 99, large-v3 adds "yue" as the 100th.
_LANGUAGE_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta "
    "no th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk "
    "sq sw gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb "
    "my bo tl mg as tt haw ln ha ba jw su yue"
).split()

LAYOUTS: dict[str, dict] = {
    # multilingual tiny/base/small/medium/large-v1/v2
    "v2": {"languages": tuple(_LANGUAGE_CODES[:99]), "no_speech": "<|nocaptions|>"},
    # large-v3 and large-v3-turbo
    "v3": {"languages": tuple(_LANGUAGE_CODES), "no_speech": "<|nospeech|>"},
}

_COMMON = {"max_source_positions": 1500, "max_target_positions": 448}

# Dimensions of the published checkpoints (openai/whisper model dims, HF config.json).
# fmt: off
ARCHS: dict[str, dict] = {
    "test": dict(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        num_mel_bins=80, vocab_size=51865, layout="v2", **_COMMON,
        # Wider than the usual 0.02 so that random outputs depend on the input (speech,
        # noise and silence decode differently, languages vary): sharper tests.
        init_std=0.1,
    ),
    "tiny": dict(
        d_model=384, encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
        decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
        num_mel_bins=80, vocab_size=51865, layout="v2", **_COMMON,
    ),
    "base": dict(
        d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
        decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        num_mel_bins=80, vocab_size=51865, layout="v2", **_COMMON,
    ),
    "small": dict(
        d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
        num_mel_bins=80, vocab_size=51865, layout="v2", **_COMMON,
    ),
    "medium": dict(
        d_model=1024, encoder_layers=24, decoder_layers=24, encoder_attention_heads=16,
        decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096,
        num_mel_bins=80, vocab_size=51865, layout="v2", **_COMMON,
    ),
    "large-v3": dict(
        d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
        decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
        num_mel_bins=128, vocab_size=51866, layout="v3", **_COMMON,
    ),
    "large-v3-turbo": dict(
        d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
        decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
        num_mel_bins=128, vocab_size=51866, layout="v3", **_COMMON,
    ),
}
# fmt: on


def _arch(arch: str) -> dict:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}") from None


def special_tokens(layout: str) -> list[str]:
    """Special tokens in id order, starting at id 50257 and ending with <|notimestamps|>."""
    lay = LAYOUTS[layout]
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in lay["languages"]),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        lay["no_speech"],
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    """<|0.00|> .. <|30.00|>: added right after <|notimestamps|> as NON-special tokens."""
    return [f"<|{i * TIME_PRECISION:.2f}|>" for i in range(N_TIMESTAMPS)]


def special_ids(layout: str) -> dict[str, int]:
    """Token string -> id for every special token of ``layout`` (real checkpoints' ids)."""
    return {tok: N_REGULAR_TOKENS + i for i, tok in enumerate(special_tokens(layout))}


def _byte_alphabet() -> list[str]:
    """The 256 byte-level characters in GPT-2 id order (so byte 0x20 " " is id 220)."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return list(bytes_to_unicode().values())


def _vocab() -> dict[str, int]:
    """50257 regular tokens: the 256 bytes, then two-byte filler tokens.

    Fillers are strings over the same byte-level alphabet, so random weights that emit
    them produce arbitrary bytes (including halves of multi-byte UTF-8 characters),
    which is exactly what decoding has to cope with. With no merges, encoding never
    produces a filler: text round-trips through the 256 byte tokens.
    """
    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    n = len(vocab)
    for a in alphabet:
        for b in alphabet:
            if n == N_REGULAR_TOKENS:
                return vocab
            vocab[a + b] = n
            n += 1
    raise AssertionError("alphabet too small for the filler tokens")


def build_tokenizer(directory, layout: str = "v2") -> Path:
    """Write a Whisper tokenizer (fast ``tokenizer.json`` plus slow vocab/merges) to a dir.

    Regular ids 0..50256, special tokens from 50257 (``special_tokens(layout)``), timestamps
    right after <|notimestamps|>. Real vocabulary sizes follow: 51865 (v2), 51866 (v3).
    Loads in well under a second with ``WhisperTokenizerFast`` (the default of
    ``AutoTokenizer``); ``WhisperTokenizer`` (slow) loads the same files and decodes alike.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import WhisperTokenizerFast

    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    vocab = _vocab()
    specials = special_tokens(layout)
    # Building the Rust tokenizer directly avoids the slow->fast conversion and the
    # per-token Python work of adding 1.6k added tokens through the slow tokenizer.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamp_tokens()])
    raw = directory / "_raw_tokenizer.json"
    tok.save(str(raw))

    fast = WhisperTokenizerFast(
        tokenizer_file=str(raw),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials,  # order matters: the last one ends the specials
        add_prefix_space=False,
        # Keep decoded text exactly as the bytes say (no " ." -> "." clean-up): the
        # transcript is "".join of segment texts and must equal the pipeline's text.
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
        errors="replace",
    )
    # Same prefix/suffix as the slow tokenizer and the real tokenizer.json files:
    # "<|startoftranscript|><|notimestamps|> ... <|endoftext|>".
    fast.set_prefix_tokens()
    fast.save_pretrained(directory)
    raw.unlink()
    return directory


def synthetic_config(arch: str):
    """A ``WhisperConfig`` with the real dimensions and token ids of ``arch``."""
    from transformers import WhisperConfig

    spec = dict(_arch(arch))
    layout = spec.pop("layout")
    ids = special_ids(layout)
    eot = ids["<|endoftext|>"]
    return WhisperConfig(
        **spec,
        activation_function="gelu",
        scale_embedding=False,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        # suppress_tokens / begin_suppress_tokens live in the generation config only
        # (in config.json, save_pretrained warns that it moves them there).
        begin_suppress_tokens=None,
        suppress_tokens=None,
        median_filter_width=7,
        use_cache=True,
    )


def _suppress_tokens(layout: str) -> list[int]:
    """Ids Whisper must never generate: non-speech symbols and the control tokens.

    openai/whisper suppresses the tokens of symbols like ``"#()*+/:;<=>@[]^_{|}~``; in a
    byte-level vocabulary those are the single-byte tokens. The control tokens mirror the
    real generation configs (startoftranscript, translate, transcribe, startoflm,
    startofprev, nocaptions/nospeech).
    """
    alphabet = _byte_alphabet()
    index = {ch: i for i, ch in enumerate(alphabet)}
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    b2u = bytes_to_unicode()
    symbols = '"#()*+/:;<=>@[\\]^_`{|}~'
    ids = sorted(index[b2u[ord(s)]] for s in symbols)
    sp = special_ids(layout)
    ids += [
        sp["<|startoftranscript|>"],
        sp["<|translate|>"],
        sp["<|transcribe|>"],
        sp["<|startoflm|>"],
        sp["<|startofprev|>"],
        sp[LAYOUTS[layout]["no_speech"]],
    ]
    return ids


def synthetic_generation_config(arch: str):
    """The ``GenerationConfig`` Whisper's ``generate`` needs (NOTES.md lists the fields)."""
    from transformers import GenerationConfig

    spec = _arch(arch)
    layout = spec["layout"]
    sp = special_ids(layout)
    eot = sp["<|endoftext|>"]
    n_dec, n_heads = spec["decoder_layers"], spec["decoder_attention_heads"]
    # Real checkpoints list cross-attention heads of the upper decoder layers that align
    # with speech; random weights have none, so take every head of the upper half.
    alignment_heads = [
        [layer, head] for layer in range(n_dec // 2, n_dec) for head in range(n_heads)
    ]
    return GenerationConfig(
        decoder_start_token_id=sp["<|startoftranscript|>"],
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=spec["max_target_positions"],
        is_multilingual=True,
        lang_to_id={f"<|{c}|>": sp[f"<|{c}|>"] for c in LAYOUTS[layout]["languages"]},
        task_to_id={"translate": sp["<|translate|>"], "transcribe": sp["<|transcribe|>"]},
        no_timestamps_token_id=sp["<|notimestamps|>"],
        prev_sot_token_id=sp["<|startofprev|>"],
        begin_suppress_tokens=[220, eot],
        suppress_tokens=_suppress_tokens(layout),
        max_initial_timestamp_index=50,  # first timestamp at most 1.00 s, as openai/whisper
        alignment_heads=alignment_heads,
        return_timestamps=False,
    )


def build_checkpoint(
    directory,
    arch: str,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Write a complete random-weight Whisper checkpoint for ``arch`` into ``directory``.

    ``seed`` makes the weights reproducible (same seed, same device: same weights).
    ``device="cuda"`` initialises the model on the GPU (seconds for large-v3 instead of
    minutes on CPU); ``dtype=torch.float16`` saves half-size weights. Returns the directory.
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    t0 = time.perf_counter()
    spec = _arch(arch)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    config = synthetic_config(arch)
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = WhisperForConditionalGeneration(config)
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config = synthetic_generation_config(arch)
    model.save_pretrained(directory, safe_serialization=True)
    del model

    WhisperFeatureExtractor(feature_size=spec["num_mel_bins"]).save_pretrained(directory)
    build_tokenizer(directory, spec["layout"])
    # Tools that read the file to find the architecture without loading it.
    (directory / "synthetic.json").write_text(json.dumps({"arch": arch, "seed": seed}) + "\n")
    logger.info(
        "built synthetic %s checkpoint in %s (%.1f s)", arch, directory, time.perf_counter() - t0
    )
    return directory
