"""Bake a Whisper checkpoint into a self-contained local directory (the Docker image's model).

    python -m pipeline.bake MODEL_ID OUT_DIR [--dtype float16|bfloat16|float32|auto]

``MODEL_ID`` is a hub id (needs network, at image build time) or a local directory.
Everything the worker loads is fetched through ``from_pretrained`` exactly as the
inference stage will load it (model weights + config + generation config, feature
extractor, tokenizer) and saved with ``save_pretrained`` into ``OUT_DIR``; the hub
download goes to a temporary cache that is deleted afterwards, so an image layer holds one
copy of the weights, not two. The result is then loaded back from ``OUT_DIR`` with hub
access switched off, so a bake that would need the network at run time fails the build
instead of the first job.

``--dtype`` (default ``auto``: as stored in the checkpoint) sets the saved weights' dtype:
``float16`` halves an fp32 checkpoint's size; the worker casts to its own dtype at load.
Imports nothing else from this project where the rest is absent (the Dockerfile runs it
before copying the rest); where ``pipeline.weights`` is present, ``MODEL_ID`` may also be
a short name of pip-installed weights (``tiny.en``, ``base``) or a CTranslate2 directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("pipeline.bake")

DTYPES = ("auto", "float16", "bfloat16", "float32")
MANIFEST = "bake.json"


def bake(model_id: str, out_dir, dtype: str = "auto") -> Path:
    """Save a complete local copy of ``model_id`` into ``out_dir``; returns ``out_dir``."""
    # Cheap checks first: the imports below take seconds.
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty")
    if model_id.startswith(("/", "./", "../", "~")) and not Path(model_id).expanduser().is_dir():
        raise FileNotFoundError(f"no such directory: {model_id}")
    t0 = time.monotonic()
    requested = model_id
    try:  # absent in the Dockerfile's bake stage, which copies only this file
        from pipeline.weights import resolve_model
    except ImportError:
        pass
    else:
        model_id = resolve_model(model_id)  # tiny.en, base, a CTranslate2 dir: converted
    resolved = model_id != requested

    import torch
    import transformers
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    local = Path(model_id).expanduser().is_dir()
    if local:
        model_id = str(Path(model_id).expanduser())
    with tempfile.TemporaryDirectory(prefix="bake-cache-") as cache:
        kwargs = {} if local else {"cache_dir": cache}
        log.info("loading %s (%s)", model_id, "local directory" if local else "hub")
        model = WhisperForConditionalGeneration.from_pretrained(
            model_id, dtype=torch_dtype, low_cpu_mem_usage=True, **kwargs
        )
        feature_extractor = WhisperFeatureExtractor.from_pretrained(model_id, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_id, **kwargs)
        gc = model.generation_config
        if getattr(gc, "no_timestamps_token_id", None) is None:
            raise ValueError(
                f"{model_id}: its generation config has no no_timestamps_token_id "
                "(not a Whisper checkpoint with timestamps?)"
            )
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)  # + config, generation config
        feature_extractor.save_pretrained(out)
        tokenizer.save_pretrained(out)
        saved_dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        n_params = sum(p.numel() for p in model.parameters())
        del model
    manifest = {
        "source": requested if resolved else model_id,
        "dtype": saved_dtype,
        "parameters": n_params,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "baked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    verify(out)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    log.info(
        "baked %s into %s: %s, %.0f MB, %.1f s",
        model_id,
        out,
        saved_dtype,
        size / 1e6,
        time.monotonic() - t0,
    )
    return out


def verify(out_dir) -> None:
    """Load every piece back from ``out_dir`` with the hub switched off (weights included:
    a missing shard must fail the build, not the first job)."""
    from transformers import AutoTokenizer, GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        WhisperConfig.from_pretrained(out_dir, local_files_only=True)
        gc = GenerationConfig.from_pretrained(out_dir, local_files_only=True)
        if getattr(gc, "no_timestamps_token_id", None) is None:
            raise ValueError(f"{out_dir}: generation config lost no_timestamps_token_id")
        WhisperFeatureExtractor.from_pretrained(out_dir, local_files_only=True)
        AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
        weights = list(Path(out_dir).glob("*.safetensors"))
        if not weights:
            raise ValueError(f"{out_dir}: no safetensors weights were written")
        from safetensors import safe_open

        for w in weights:  # headers only: cheap, and catches a truncated file
            with safe_open(str(w), framework="pt") as f:
                if not list(f.keys()):
                    raise ValueError(f"{w}: no tensors")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.bake", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "model_id", help="hub id (e.g. openai/whisper-large-v3-turbo) or local directory"
    )
    p.add_argument("out_dir", help="directory to write (must not exist or be empty)")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="dtype of the saved weights")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    existed = os.path.lexists(args.out_dir)
    try:
        bake(args.model_id, args.out_dir, args.dtype)
    except Exception as exc:  # noqa: BLE001 - one line for the build log
        print(
            f"error: cannot bake {args.model_id}: {' '.join(str(exc).split()) or type(exc).__name__}",
            file=sys.stderr,
        )
        if not existed:  # never delete what was there before us
            shutil.rmtree(args.out_dir, ignore_errors=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
