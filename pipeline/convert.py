"""Convert a CTranslate2 Whisper model into a transformers checkpoint directory.

    python -m pipeline.convert SRC DST [--model-bin PART [PART ...]]
                               [--dtype auto|float32|float16|bfloat16] [-v]

``SRC`` is a CTranslate2 Whisper directory (the layout faster-whisper loads: ``model.bin``,
``config.json``, ``tokenizer.json``). ``--model-bin`` names the pieces whose concatenation
is ``model.bin`` when it ships split (pip packages cap file sizes); ``SRC`` then only has to
hold ``config.json`` and ``tokenizer.json``. ``DST`` must not exist; it is written whole in
a temporary sibling directory and renamed into place, so a reader never sees half a
checkpoint. It then holds everything ``WhisperBackend`` loads with ``from_pretrained``:

- ``model.safetensors`` + ``config.json``: ``WhisperForConditionalGeneration``, dims read
  off the tensors (d_model and num_mel_bins from conv1, vocab_size from the embeddings,
  context lengths from the position tables, heads from the spec's ``num_heads``);
- ``generation_config.json``: the token ids and rules Whisper's ``generate`` reads (see
  ``generation_config_dict``);
- a fast tokenizer from ``tokenizer.json``, with the 1501 timestamp tokens ``<|0.00|>`` ..
  ``<|30.00|>`` added after the special tokens as non-special tokens when absent
  (transformers finds where timestamps begin from the last special token);
- ``preprocessor_config.json``: a ``WhisperFeatureExtractor`` with 80 or 128 mel bins;
- ``converted_from.json``: the marker naming the source (paths, sizes, mtimes).

``model.bin`` (binary format version 5+, little-endian; read by ``read_model_bin``): u32
version; the spec name (u16 length incl. a trailing NUL, bytes); u32 spec revision; u32
variable count, each: name, u8 rank, rank x u32 dims, u8 dtype (0 float32, 1 int8, 2 int16,
3 int32, 4 float16, 5 bfloat16), u32 byte count, raw data; u32 alias count, each (alias,
target) as two strings. Quantized weights (int8 per output row, int16 per tensor) come with
a float ``<name>_scale`` and are dequantized as ``q / scale`` (CTranslate2 stores
``rint(w * scale)``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

logger = logging.getLogger(__name__)

# Bump when the output changes, so caches keyed on it (pipeline/weights.py) re-convert.
CONVERTER_VERSION = 1
MARKER = "converted_from.json"
SPEC_NAME = "WhisperSpec"
MIN_BINARY_VERSION = 5  # older files have no dtype ids in this form
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in steps of 0.02 s
MAX_INITIAL_TIMESTAMP_INDEX = 50  # 1.00 s, as in the published generation configs
SAVE_DTYPES = ("auto", "float32", "float16", "bfloat16")

# CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class ConversionError(ValueError):
    """The source is not a convertible CTranslate2 Whisper model; the message is one line."""


# --------------------------------------------------------------------------- reading


class _ChainedReader(io.RawIOBase):
    """Read-only stream over the concatenation of several files (split ``model.bin``)."""

    def __init__(self, paths: Sequence[Path]):
        super().__init__()
        self._paths = list(paths)
        self._index = 0
        self._file: BinaryIO | None = None
        self._open_next()

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._index < len(self._paths):
            self._file = open(self._paths[self._index], "rb")
            self._index += 1

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        while self._file is not None:
            n = self._file.readinto(view)
            if n:
                return n
            self._open_next()
        return 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _read_exact(f: BinaryIO, n: int, what: str) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            raise ConversionError(f"model.bin is truncated (while reading {what})")
        got += k
    return buf


def _unpack(f: BinaryIO, fmt: str, what: str):
    size = struct.calcsize("<" + fmt)
    return struct.unpack("<" + fmt, _read_exact(f, size, what))


def _read_string(f: BinaryIO, what: str) -> str:
    (n,) = _unpack(f, "H", what)
    raw = bytes(_read_exact(f, n, what))
    return raw.rstrip(b"\0").decode("utf-8")


@dataclass
class CT2Model:
    """The contents of a CTranslate2 ``model.bin``.

    ``variables``: name -> torch tensor in its stored dtype (float32, int8, int16, int32,
    float16 or bfloat16), aliases included (an alias is the same tensor object as its
    target, e.g. ``decoder/projection/weight`` -> ``decoder/embeddings/weight``).
    """

    version: int
    spec: str
    revision: int
    variables: dict = field(default_factory=dict)
    aliases: dict = field(default_factory=dict)


def read_header(paths: Sequence[Path]) -> tuple[int, str, int]:
    """(binary version, spec name, spec revision): a cheap check before a full read."""
    with _ChainedReader(paths) as f:
        (version,) = _unpack(f, "I", "the version")
        if version < MIN_BINARY_VERSION or version > 1000:
            raise ConversionError(
                f"model.bin has binary version {version}: not a CTranslate2 model "
                f"this converter reads (versions {MIN_BINARY_VERSION}+)"
            )
        spec = _read_string(f, "the spec name")
        (revision,) = _unpack(f, "I", "the spec revision")
    return version, spec, revision


def read_model_bin(paths: Sequence[Path] | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (one path, or the parts that concatenate to it)."""
    import torch

    torch_dtypes = {
        "float32": torch.float32,
        "int8": torch.int8,
        "int16": torch.int16,
        "int32": torch.int32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
    }
    if isinstance(paths, (str, os.PathLike)):
        paths = [Path(paths)]
    with _ChainedReader([Path(p) for p in paths]) as f:
        (version,) = _unpack(f, "I", "the version")
        if version < MIN_BINARY_VERSION or version > 1000:
            raise ConversionError(f"model.bin has unsupported binary version {version}")
        model = CT2Model(
            version=version,
            spec=_read_string(f, "the spec name"),
            revision=_unpack(f, "I", "the spec revision")[0],
        )
        (n_vars,) = _unpack(f, "I", "the variable count")
        for _ in range(n_vars):
            name = _read_string(f, "a variable name")
            (rank,) = _unpack(f, "B", name)
            dims = _unpack(f, f"{rank}I", name) if rank else ()
            dtype_id, n_bytes = _unpack(f, "BI", name)
            if dtype_id >= len(_CT2_DTYPES):
                raise ConversionError(f"model.bin: {name} has unknown dtype id {dtype_id}")
            dtype = torch_dtypes[_CT2_DTYPES[dtype_id]]
            data = _read_exact(f, n_bytes, name)
            numel = 1
            for d in dims:
                numel *= d
            if numel * dtype.itemsize != n_bytes:
                raise ConversionError(
                    f"model.bin: {name} has {n_bytes} bytes for shape {list(dims)} "
                    f"of {_CT2_DTYPES[dtype_id]}"
                )
            tensor = torch.frombuffer(data, dtype=dtype) if n_bytes else torch.empty(0, dtype=dtype)
            model.variables[name] = tensor.reshape(dims)
        (n_aliases,) = _unpack(f, "I", "the alias count")
        for _ in range(n_aliases):
            alias = _read_string(f, "an alias")
            target = _read_string(f, "an alias target")
            model.aliases[alias] = target
        if f.read(1):
            raise ConversionError("model.bin has trailing bytes after the aliases")
    for alias, target in model.aliases.items():
        while target in model.aliases:  # an alias of an alias (not seen, but allowed)
            target = model.aliases[target]
        if target not in model.variables:
            raise ConversionError(f"model.bin: alias {alias} points to missing {target}")
        model.variables[alias] = model.variables[target]
    return model


# --------------------------------------------------------------------------- mapping


def _scalar(variables: dict, name: str) -> int | None:
    t = variables.get(name)
    return int(t.reshape(-1)[0]) if t is not None and t.numel() == 1 else None


def _float(variables: dict, name: str):
    """Variable ``name`` as a float32 tensor, dequantized when CTranslate2 quantized it.

    int8 weights have a per-output-row scale (shape (out,)), int16 a scalar one; both are
    stored as ``rint(w * scale)``, so ``w = q / scale``.
    """
    import torch

    try:
        t = variables[name]
    except KeyError:
        raise ConversionError(f"model.bin has no variable {name}") from None
    scale = variables.get(name + "_scale")
    if t.dtype in (torch.int8, torch.int16, torch.int32):
        if scale is None:
            raise ConversionError(f"model.bin: {name} is {t.dtype} without a {name}_scale")
        scale = scale.float()
        if scale.numel() > 1:
            scale = scale.reshape(-1, *([1] * (t.dim() - 1)))
        return t.float() / scale
    return t.float()


def _layer_count(variables: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    found = {int(m.group(1)) for name in variables if (m := pat.match(name))}
    n = len(found)
    if found != set(range(n)):
        raise ConversionError(f"model.bin: {prefix} layers are not numbered 0..{n - 1}")
    return n


@dataclass(frozen=True)
class Dims:
    """Model dimensions read off the tensors (names as in transformers' WhisperConfig)."""

    num_mel_bins: int
    d_model: int
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int
    vocab_size: int


def model_dims(variables: dict) -> Dims:
    """Dimensions from the tensors: conv1 (d_model, n_mels, 3), embeddings (vocab, d_model)."""
    try:
        conv1 = variables["encoder/conv1/weight"]
        emb = variables["decoder/embeddings/weight"]
        enc_pos = variables["encoder/position_encodings/encodings"]
        dec_pos = variables["decoder/position_encodings/encodings"]
        enc_ffn = variables["encoder/layer_0/ffn/linear_0/weight"]
        dec_ffn = variables["decoder/layer_0/ffn/linear_0/weight"]
    except KeyError as exc:
        raise ConversionError(f"model.bin has no variable {exc.args[0]}") from None
    d_model = conv1.shape[0]
    # num_heads is a spec attribute stored as a scalar; head size 64 in every Whisper.
    enc_heads = _scalar(variables, "encoder/num_heads") or d_model // 64
    dec_heads = _scalar(variables, "decoder/num_heads") or d_model // 64
    return Dims(
        num_mel_bins=conv1.shape[1],
        d_model=d_model,
        encoder_layers=_layer_count(variables, "encoder"),
        decoder_layers=_layer_count(variables, "decoder"),
        encoder_attention_heads=enc_heads,
        decoder_attention_heads=dec_heads,
        encoder_ffn_dim=enc_ffn.shape[0],
        decoder_ffn_dim=dec_ffn.shape[0],
        max_source_positions=enc_pos.shape[0],
        max_target_positions=dec_pos.shape[0],
        vocab_size=emb.shape[0],
    )


def state_dict(variables: dict, dims: Dims) -> dict:
    """transformers ``WhisperForConditionalGeneration`` weights (float32 tensors) by name.

    CTranslate2 fuses attention projections along the output rows: self-attention
    ``linear_0`` is [q; k; v] (3D, D), cross-attention ``linear_0`` is q and ``linear_1``
    is [k; v] over the encoder output. transformers' ``k_proj`` has no bias; CTranslate2's
    k bias is zero, and would not matter anyway (q.b_k is the same for every key, and
    softmax ignores a per-query constant). ``proj_out`` is tied to the embeddings.
    """
    D = dims.d_model
    out: dict = {}

    def put(dst: str, src: str) -> None:
        out[dst] = _float(variables, src)

    def put_norm(dst: str, src: str) -> None:
        put(dst + ".weight", src + "/gamma")
        put(dst + ".bias", src + "/beta")

    def put_linear(dst: str, src: str, bias: bool = True) -> None:
        put(dst + ".weight", src + "/weight")
        if bias:
            put(dst + ".bias", src + "/bias")

    def put_fused(dsts: Sequence[str], src: str) -> None:
        w, b = _float(variables, src + "/weight"), _float(variables, src + "/bias")
        if w.shape != (D * len(dsts), D):
            raise ConversionError(f"model.bin: {src}/weight has shape {list(w.shape)}")
        for i, dst in enumerate(dsts):
            out[dst + ".weight"] = w[i * D : (i + 1) * D].contiguous()
            if not dst.endswith("k_proj"):
                out[dst + ".bias"] = b[i * D : (i + 1) * D].contiguous()

    def put_ffn(dst: str, src: str) -> None:
        put_norm(dst + ".final_layer_norm", src + "/ffn/layer_norm")
        put_linear(dst + ".fc1", src + "/ffn/linear_0")
        put_linear(dst + ".fc2", src + "/ffn/linear_1")

    enc, dec = "model.encoder", "model.decoder"
    put_linear(f"{enc}.conv1", "encoder/conv1")
    put_linear(f"{enc}.conv2", "encoder/conv2")
    put(f"{enc}.embed_positions.weight", "encoder/position_encodings/encodings")
    put_norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(dims.encoder_layers):
        dst, src = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        attn = f"{dst}.self_attn"
        put_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        put_fused(
            [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"], f"{src}/self_attention/linear_0"
        )
        put_linear(f"{attn}.out_proj", f"{src}/self_attention/linear_1")
        put_ffn(dst, src)

    put(f"{dec}.embed_tokens.weight", "decoder/embeddings/weight")
    put(f"{dec}.embed_positions.weight", "decoder/position_encodings/encodings")
    put_norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(dims.decoder_layers):
        dst, src = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        attn, cross = f"{dst}.self_attn", f"{dst}.encoder_attn"
        put_norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        put_fused(
            [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"], f"{src}/self_attention/linear_0"
        )
        put_linear(f"{attn}.out_proj", f"{src}/self_attention/linear_1")
        put_norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        put_linear(f"{cross}.q_proj", f"{src}/attention/linear_0")
        put_fused([f"{cross}.k_proj", f"{cross}.v_proj"], f"{src}/attention/linear_1")
        put_linear(f"{cross}.out_proj", f"{src}/attention/linear_2")
        put_ffn(dst, src)

    proj = variables.get("decoder/projection/weight")
    if proj is not None and proj is not variables["decoder/embeddings/weight"]:
        # transformers ties proj_out to the embeddings; a separate projection (stored
        # twice, e.g. quantized differently) must still be the same matrix.
        p, e = _float(variables, "decoder/projection/weight"), out[f"{dec}.embed_tokens.weight"]
        if p.shape != e.shape or (p - e).abs().max() > 1e-2 * e.abs().max():
            raise ConversionError("model.bin: decoder projection is not tied to the embeddings")
    if (
        "decoder/projection/bias" in variables
        and _float(variables, "decoder/projection/bias").abs().max() > 0
    ):
        raise ConversionError("model.bin: decoder projection has a bias (not Whisper)")
    return out


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class TokenIds:
    """Special token ids read from ``tokenizer.json``'s added tokens."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_prev: int
    no_timestamps: int
    languages: dict  # "<|en|>" -> id, in id order

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1


def _timestamp_tokens() -> list[str]:
    return [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)]


def prepare_tokenizer_json(tok: dict, vocab_size: int) -> tuple[dict, TokenIds]:
    """``tokenizer.json`` with the timestamp tokens added (when absent), and its special ids.

    Whisper's layout: the BPE vocabulary, then special tokens from ``<|endoftext|>`` to
    ``<|notimestamps|>``, then 1501 timestamp tokens; the total is the embedding rows.
    """
    added = sorted(tok.get("added_tokens", []), key=lambda t: t["id"])
    by_content = {t["content"]: t["id"] for t in added}
    need = ["<|endoftext|>", "<|startoftranscript|>", "<|translate|>", "<|transcribe|>",
            "<|startofprev|>", "<|notimestamps|>"]  # fmt: skip
    missing = [n for n in need if n not in by_content]
    if missing:
        raise ConversionError(
            f"tokenizer.json has no {', '.join(missing)} (not a Whisper tokenizer)"
        )
    ids = {n: by_content[n] for n in need}
    nts = ids["<|notimestamps|>"]
    lang = re.compile(r"<\|[a-z]{2,3}(_[a-z]+)?\|>$")
    languages = {
        t["content"]: t["id"]
        for t in added
        if ids["<|startoftranscript|>"] < t["id"] < ids["<|translate|>"]
        and lang.match(t["content"])
    }
    stamps = _timestamp_tokens()
    if stamps[0] in by_content:
        got = [by_content.get(s) for s in stamps]
        if got != list(range(nts + 1, nts + 1 + N_TIMESTAMPS)):
            raise ConversionError("tokenizer.json: timestamp tokens do not follow <|notimestamps|>")
    else:
        if any(t["id"] > nts for t in added):
            raise ConversionError(
                "tokenizer.json has tokens after <|notimestamps|> that are not timestamps"
            )
        tok = dict(tok)
        tok["added_tokens"] = added + [
            {"id": nts + 1 + i, "content": s, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": True, "special": False}  # fmt: skip
            for i, s in enumerate(stamps)
        ]
    if nts + 1 + N_TIMESTAMPS != vocab_size:
        raise ConversionError(
            f"tokenizer.json has {nts + 1 + N_TIMESTAMPS} tokens with timestamps, "
            f"the model's embeddings {vocab_size}"
        )
    token_ids = TokenIds(
        eot=ids["<|endoftext|>"],
        sot=ids["<|startoftranscript|>"],
        translate=ids["<|translate|>"],
        transcribe=ids["<|transcribe|>"],
        sot_prev=ids["<|startofprev|>"],
        no_timestamps=nts,
        languages=languages,
    )
    return tok, token_ids


def special_tokens(tok: dict, ids: TokenIds) -> list[str]:
    """The special tokens in id order, ``<|endoftext|>`` .. ``<|notimestamps|>``."""
    return [
        t["content"]
        for t in sorted(tok["added_tokens"], key=lambda t: t["id"])
        if ids.eot <= t["id"] <= ids.no_timestamps
    ]


def is_multilingual(vocab_size: int) -> bool:
    """openai/whisper's rule: English-only models have 51864 tokens, multilingual 51865+."""
    return vocab_size >= 51865


def generation_config_dict(ct2_config: dict, ids: TokenIds, dims: Dims) -> dict:
    """What Whisper's ``generate`` reads, from the CTranslate2 config and the token ids.

    English-only models get no ``lang_to_id``/``task_to_id``/``task``: transformers 4.57 runs
    language detection whenever ``lang_to_id`` exists and no language is given, even for
    a model that is not multilingual, and would put a language token in tiny.en's prompt.
    No ``forced_decoder_ids`` (transformers 5.x rejects it; callers pass language=/task=).
    """
    multilingual = is_multilingual(dims.vocab_size)
    gc = {
        "decoder_start_token_id": ids.sot,
        "bos_token_id": ids.eot,
        "eos_token_id": ids.eot,
        "pad_token_id": ids.eot,
        "max_length": dims.max_target_positions,
        "is_multilingual": multilingual,
        "no_timestamps_token_id": ids.no_timestamps,
        "prev_sot_token_id": ids.sot_prev,
        "begin_suppress_tokens": [
            int(i) for i in ct2_config.get("suppress_ids_begin") or [220, ids.eot]
        ],
        "suppress_tokens": [int(i) for i in ct2_config.get("suppress_ids") or []],
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "return_timestamps": False,
    }
    heads = ct2_config.get("alignment_heads")
    if heads:
        gc["alignment_heads"] = [[int(layer), int(head)] for layer, head in heads]
    if multilingual:
        if not ids.languages:
            raise ConversionError("tokenizer.json has no language tokens for a multilingual model")
        gc["lang_to_id"] = dict(ids.languages)
        gc["task_to_id"] = {"transcribe": ids.transcribe, "translate": ids.translate}
        # The default task. Without it, generate() given neither language nor task
        # prompts <|startoftranscript|><|lang|> with no task token, and multilingual
        # base then loops on jfk.flac ("Americans Americans ..."). The published
        # checkpoints get the task from forced_decoder_ids [[1, None], [2, transcribe]],
        # which transformers 5.x rejects; ``task`` works in both.
        gc["task"] = "transcribe"
        ct2_langs = ct2_config.get("lang_ids")
        if ct2_langs and sorted(ct2_langs) != sorted(ids.languages.values()):
            logger.warning(
                "config.json lang_ids differ from tokenizer.json's language tokens; "
                "using the tokenizer's"
            )
    return gc


# --------------------------------------------------------------------------- writing


def source_files(
    src: Path, model_bin: Sequence[Path] | None = None
) -> tuple[list[Path], Path, Path]:
    """Check a source cheaply (no torch): returns (model.bin parts, config.json, tokenizer.json).

    Raises ConversionError with one line saying what is wrong.
    """
    src = Path(src)
    if not src.exists():
        raise ConversionError(f"{src}: no such directory")
    if not src.is_dir():
        raise ConversionError(
            f"{src}: not a directory (expected a CTranslate2 Whisper model directory)"
        )
    if (src / "config.json").is_file():
        try:
            cfg = json.loads((src / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConversionError(f"{src}/config.json: {exc}") from None
        if isinstance(cfg, dict) and "model_type" in cfg:
            raise ConversionError(
                f"{src}: already a transformers checkpoint (config.json has model_type)"
            )
    parts = [Path(p) for p in model_bin] if model_bin else [src / "model.bin"]
    for name in ("config.json", "tokenizer.json"):
        if not (src / name).is_file():
            raise ConversionError(f"{src}: no {name} (not a CTranslate2 Whisper model directory)")
    for p in parts:
        if not p.is_file():
            raise ConversionError(f"{p}: no such file (not a CTranslate2 Whisper model directory)")
    _, spec, _ = read_header(parts)
    if spec != SPEC_NAME:
        raise ConversionError(
            f"{parts[0]}: a CTranslate2 {spec or 'unknown'} model, not {SPEC_NAME}"
        )
    return parts, src / "config.json", src / "tokenizer.json"


def source_record(src: Path, parts: Sequence[Path], extra: Iterable[Path] = ()) -> dict:
    """What the marker file says about the source: absolute paths, sizes, mtimes."""

    def stat(p: Path) -> dict:
        st = p.stat()
        return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    return {
        "source": str(Path(src).resolve()),
        "model_bin": [stat(p) for p in parts],
        "files": [stat(p) for p in extra],
    }


def _save_dtype(variables: dict, dtype: str):
    """torch dtype to store: "auto" keeps the model's float dtype (quantized -> float32)."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    # Layer norms are never quantized: their dtype is the model's float dtype
    # (float16 for int8_float16, float32 for int8 / int16 / float32).
    gamma = variables.get("encoder/layer_norm/gamma")
    if gamma is not None and gamma.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return gamma.dtype
    return torch.float32


def _check_against_transformers(weights: dict, config) -> None:
    """Every parameter transformers expects, with its shape, and nothing else (meta device)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    with torch.device("meta"):
        ref = WhisperForConditionalGeneration(config)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k != "proj_out.weight"}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or extra or wrong:
        raise ConversionError(
            f"weights do not fit transformers' Whisper: missing {missing[:3]}, "
            f"unexpected {extra[:3]}, wrong shape {wrong[:3]}"
        )


def _write_checkpoint(
    out: Path, parts, config_path: Path, tokenizer_path: Path, dtype: str
) -> dict:
    """Write the whole checkpoint into the (empty, private) directory ``out``."""
    from safetensors.torch import save_file
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperTokenizerFast,
    )

    t0 = time.monotonic()
    ct2 = read_model_bin(parts)
    if ct2.spec != SPEC_NAME:
        raise ConversionError(f"model.bin holds a {ct2.spec}, not a {SPEC_NAME}")
    variables = ct2.variables
    dims = model_dims(variables)
    try:
        ct2_config = json.loads(config_path.read_text())
        tok_json = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {config_path.parent}: {exc}") from None
    tok_json, ids = prepare_tokenizer_json(tok_json, dims.vocab_size)
    save_dtype = _save_dtype(variables, dtype)
    t_read = time.monotonic()

    config = WhisperConfig(
        vocab_size=dims.vocab_size,
        num_mel_bins=dims.num_mel_bins,
        d_model=dims.d_model,
        encoder_layers=dims.encoder_layers,
        decoder_layers=dims.decoder_layers,
        encoder_attention_heads=dims.encoder_attention_heads,
        decoder_attention_heads=dims.decoder_attention_heads,
        encoder_ffn_dim=dims.encoder_ffn_dim,
        decoder_ffn_dim=dims.decoder_ffn_dim,
        max_source_positions=dims.max_source_positions,
        max_target_positions=dims.max_target_positions,
        pad_token_id=ids.eot,
        bos_token_id=ids.eot,
        eos_token_id=ids.eot,
        decoder_start_token_id=ids.sot,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        use_cache=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    config.dtype = save_dtype  # transformers 4.56+ name (torch_dtype warns)
    weights = state_dict(variables, dims)
    _check_against_transformers(weights, config)
    del variables, ct2
    # copy=True: aliased variables (CTranslate2 stores identical tensors once) and the
    # slices of fused projections must not share storage in a safetensors file.
    weights = {k: v.to(save_dtype, copy=True).contiguous() for k, v in weights.items()}
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    del weights
    config.save_pretrained(out)

    gen = generation_config_dict(ct2_config, ids, dims)
    GenerationConfig(**gen).save_pretrained(out)

    WhisperFeatureExtractor(feature_size=dims.num_mel_bins).save_pretrained(out)

    with tempfile.TemporaryDirectory() as tmp:
        tok_file = Path(tmp) / "tokenizer.json"
        tok_file.write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        eot = "<|endoftext|>"
        tokenizer = WhisperTokenizerFast(
            tokenizer_file=str(tok_file),
            bos_token=eot,
            eos_token=eot,
            unk_token=eot,
            pad_token=eot,
            additional_special_tokens=special_tokens(tok_json, ids),
            model_max_length=1024,
        )
        if tokenizer.all_special_ids[-1] + 1 != ids.timestamp_begin:
            raise ConversionError("tokenizer: the last special token is not <|notimestamps|>")
        if len(tokenizer) != dims.vocab_size:
            raise ConversionError(
                f"tokenizer has {len(tokenizer)} tokens, the model {dims.vocab_size}"
            )
        tokenizer.save_pretrained(out)
    logger.debug(
        "read model.bin in %.1f s, wrote in %.1f s", t_read - t0, time.monotonic() - t_read
    )
    return {
        "dims": dims.__dict__,
        "dtype": str(save_dtype).replace("torch.", ""),
        "multilingual": gen["is_multilingual"],
    }


def _remove_stale_temps(parent: Path, max_age_s: float = 24 * 3600) -> None:
    """Temporary directories left by a killed conversion (never a live one: age)."""
    now = time.time()
    for p in parent.glob(".convert-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def convert(src, dst, *, model_bin: Sequence | None = None, dtype: str = "auto") -> Path:
    """Convert the CTranslate2 Whisper model in ``src`` into a transformers checkpoint ``dst``.

    ``model_bin``: the files whose concatenation is ``model.bin`` (default
    ``src/model.bin``). ``dtype``: the saved weights' dtype; "auto" keeps the model's
    (float16 for the published faster-whisper conversions; quantized int8/int16 weights
    are dequantized, to float32 unless the model's float dtype is lower).
    Written into a temporary sibling of ``dst`` and renamed: raises FileExistsError when
    ``dst`` exists (another process may have just finished the same conversion; its copy
    is complete, since only whole directories are renamed into place) and
    ConversionError (one line) for a source that is not a CTranslate2 Whisper model.
    Returns ``dst``.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAVE_DTYPES)}, not {dtype!r}")
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    parts, config_path, tokenizer_path = source_files(
        src, [Path(p).expanduser() for p in model_bin or ()]
    )
    if os.path.lexists(dst):
        raise FileExistsError(f"{dst} exists")
    t0 = time.monotonic()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dst.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".convert-{dst.name}-", dir=dst.parent))
    try:
        info = _write_checkpoint(tmp, parts, config_path, tokenizer_path, dtype)
        record = source_record(src, parts, [config_path, tokenizer_path])
        record.update(info)
        record["converter_version"] = CONVERTER_VERSION
        record["converted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        (tmp / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        # mkdtemp makes the directory 0700 and safetensors its file 0600: a shared cache
        # must be readable by whoever runs the worker.
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        try:
            os.rename(tmp, dst)
        except OSError as exc:
            if os.path.isdir(dst):  # lost a race: someone else renamed theirs first
                raise FileExistsError(f"{dst} exists") from exc
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s into %s in %.1f s", src, dst, time.monotonic() - t0)
    return dst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.convert",
        description="Convert a CTranslate2 Whisper model directory into a transformers checkpoint.",
    )
    p.add_argument(
        "src", help="CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json)"
    )
    p.add_argument("dst", help="checkpoint directory to write (must not exist)")
    p.add_argument(
        "--model-bin",
        nargs="+",
        metavar="PART",
        help="files whose concatenation is model.bin, in order (default: SRC/model.bin)",
    )
    p.add_argument(
        "--dtype", choices=SAVE_DTYPES, default="auto", help="dtype of the saved weights"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress on stderr")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        out = convert(args.src, args.dst, model_bin=args.model_bin, dtype=args.dtype)
    except (ConversionError, FileExistsError) as exc:
        print(f"error: cannot convert {args.src}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, whatever broke
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: cannot convert {args.src}: {msg}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
