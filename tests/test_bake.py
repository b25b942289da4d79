"""The deployment files (issue 3): the Dockerfile's model-bake command run for real on a
tiny local checkpoint standing in for the hub, every file the Dockerfile copies present
and let through .dockerignore, the GPU requirements in step with requirements.txt, and the
RunPod Hub files valid against our own request parser. There is no Docker engine here."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.worker import parse_request
from tests import media

REPO = Path(__file__).resolve().parents[1]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, cur = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if not cur and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            cur += raw.rstrip()[:-1] + " "
            continue
        cur += raw
        lines.append(cur.strip())
        cur = ""
    out = []
    for ln in lines:
        instr, _, args = ln.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def build_args() -> dict[str, str]:
    args = {}
    for instr, rest in dockerfile():
        if instr == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    return args


def env_values() -> dict[str, str]:
    env = {}
    for instr, rest in dockerfile():
        if instr == "ENV":
            for tok in shlex.split(rest):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


def copy_sources() -> list[str]:
    srcs = []
    for instr, rest in dockerfile():
        if instr == "COPY":
            toks = [t for t in shlex.split(rest) if not t.startswith("--")]
            srcs += toks[:-1]
    return srcs


def bake_command() -> list[str]:
    """The Dockerfile's bake command, as argv, with build arguments left as ${NAME}."""
    for instr, rest in dockerfile():
        if instr == "RUN" and "pipeline.bake" in rest:
            part = next(p for p in rest.split("&&") if "pipeline.bake" in p)
            return shlex.split(part, posix=False)
    raise AssertionError("no RUN line runs pipeline.bake")


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == tok[-1] and tok[0] in "\"'" else tok


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches a path's parent
    directories; ``!`` re-includes."""
    included = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(p, pat) for p in prefixes)
        if pat.startswith("**/"):
            hit = hit or any(fnmatch.fnmatchcase(seg, pat[3:]) for seg in parts)
        if hit:
            included = neg
    return included


def test_every_copy_source_exists_and_is_in_the_build_context():
    srcs = copy_sources()
    assert {
        "requirements-gpu.txt",
        "runpod_entry.py",
        "pipeline/",
        "stages/",
        "pipeline/bake.py",
    } <= set(srcs)
    for src in srcs:
        p = REPO / src
        assert p.exists(), src
        files = [src] if p.is_file() else [str(f.relative_to(REPO)) for f in p.rglob("*.py")]
        assert files, src
        for f in files:
            assert dockerignore_allows(f), f
    assert not dockerignore_allows("tests/test_bake.py")
    assert not dockerignore_allows(".git/config")
    assert not dockerignore_allows("pipeline/__pycache__/worker.cpython-311.pyc")


def test_dockerfile_shape():
    instrs = dockerfile()
    base = build_args()["BASE_IMAGE"]
    assert re.fullmatch(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime", base), base
    assert instrs[-1] == ("CMD", '["python", "-u", "runpod_entry.py"]')
    assert build_args()["MODEL_ID"] == "openai/whisper-large-v3-turbo"
    env = env_values()
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    cmd = [_unquote(t) for t in bake_command()]
    assert cmd[:4] == ["python", "-m", "pipeline.bake", "${MODEL_ID}"]
    assert env["MODEL_ID"] == cmd[4]  # the worker loads the copy the build baked
    text = (REPO / "Dockerfile").read_text()
    assert "apt-get install" in text and "ffmpeg" in text
    # No pip step may replace the image's CUDA torch: it is installed under constraints.
    pip_lines = [r for i, r in instrs if i == "RUN" and "pip install" in r]
    assert pip_lines and all("-c /tmp/torch-pins.txt" in r for r in pip_lines)
    assert not re.search(r"pip install[^&]*\btorch", text.replace("torch-pins", ""))


def _reqs(path: Path) -> dict[str, str]:
    out = {}
    for ln in path.read_text().splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            name = re.split(r"[<>=!~\[ ]", ln, maxsplit=1)[0].lower()
            out[name] = ln
    return out


def test_gpu_requirements_are_requirements_without_torch():
    cpu, gpu = _reqs(REPO / "requirements.txt"), _reqs(REPO / "requirements-gpu.txt")
    assert "torch" in cpu and "torch" not in gpu and "torchaudio" not in gpu
    assert gpu == {k: v for k, v in cpu.items() if k != "torch"}


def test_gpu_requirements_do_not_pull_torch():
    """None of the installed packages the image's pip step installs declares torch."""
    from importlib.metadata import requires

    for name in _reqs(REPO / "requirements-gpu.txt"):
        deps = [d for d in (requires(name) or []) if "extra ==" not in d]
        assert not [d for d in deps if re.match(r"torch\b", d)], (name, deps)


def test_bake_command_of_the_dockerfile_works(tiny_model_dir, tmp_path):
    """Run the Dockerfile's bake step as written, in a directory holding only what the
    Dockerfile copies before it, with the tiny checkpoint standing in for the hub id."""
    stage = tmp_path / "opt-bake"
    for instr, rest in dockerfile():
        if instr == "COPY" and "pipeline/bake.py" in rest:
            toks = shlex.split(rest)
            dest = stage / "pipeline"
            dest.mkdir(parents=True)
            for src in toks[:-1]:
                shutil.copy(REPO / src, dest)
    out_dir = tmp_path / "models" / "whisper"
    args = build_args()
    argv = []
    for tok in bake_command():
        tok = _unquote(tok)
        tok = tok.replace("${MODEL_ID}", str(tiny_model_dir)).replace(
            "${MODEL_DTYPE}", args["MODEL_DTYPE"]
        )
        tok = tok.replace(env_values()["MODEL_ID"], str(out_dir))
        argv.append(tok)
    assert argv[0] == "python"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run(
        [sys.executable, *argv[1:]], cwd=stage, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out_dir / "bake.json").read_text())
    assert manifest["source"] == str(tiny_model_dir) and manifest["dtype"] == args["MODEL_DTYPE"]
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer_config.json",
    ):
        assert (out_dir / name).is_file(), name

    # The worker's own loader reads it with the hub off, and it transcribes.
    from pipeline.types import DecodeOptions
    from stages.infer import load_backend

    backend = load_backend("whisper", str(out_dir), device="cpu", dtype="float32")
    ref = load_backend("whisper", str(tiny_model_dir), device="cpu", dtype="float32")
    audio = np.zeros(480000, np.float32)
    audio[:32000] = media.tone(440, 2.0)
    opts = DecodeOptions(language="en", tokens_per_window=20)
    (res,) = backend.transcribe([backend.prepare(audio)], opts)
    assert res.n_tokens > 0 and res.segments
    assert len(backend.tokenizer) == len(ref.tokenizer)
    assert (
        backend.model.generation_config.no_timestamps_token_id
        == ref.model.generation_config.no_timestamps_token_id
    )


def test_bake_refuses_bad_input_cleanly(tmp_path, tiny_model_dir):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.bake", str(tmp_path / "nope"), str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: cannot bake")
    assert not out.exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "mine.txt").write_text("x")
    r = subprocess.run(
        [sys.executable, "-m", "pipeline.bake", str(tiny_model_dir), str(keep)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "not empty" in r.stderr
    assert (keep / "mine.txt").exists()  # never deletes what it did not create


# ------------------------------------------------------------------ RunPod Hub files


def test_hub_json():
    hub = json.loads((REPO / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["category"] == "audio"
    assert hub["title"] and hub["description"]
    cfg = hub["config"]
    assert cfg["runsOn"] == "GPU" and cfg["gpuCount"] >= 1 and cfg["containerDiskInGb"] >= 10
    keys = {e["key"] for e in cfg["env"]}
    assert {"MODEL_ID", "MODEL_BATCH_SIZE", "RUNPOD_ALLOW_PRIVATE_DOWNLOAD_URLS"} <= keys
    for e in cfg["env"]:
        # Every setting has a default, but MAX_BATCH_SIZE: empty means MODEL_BATCH_SIZE (a
        # default of 64 there refused batch sizes above 64 on a worker set to 256).
        optional = e["key"] == "MAX_BATCH_SIZE"
        assert {"name", "type", "description"} | (set() if optional else {"default"}) <= set(e["input"]), e
        assert not optional or ("default" not in e["input"] and e["input"]["required"] is False), e
    assert (
        next(e for e in cfg["env"] if e["key"] == "MODEL_ID")["input"]["default"]
        == env_values()["MODEL_ID"]
    )


def test_hub_tests_and_test_input_pass_our_parser():
    tests = json.loads((REPO / ".runpod" / "tests.json").read_text())
    assert tests["tests"] and tests["config"]["gpuCount"] >= 1
    for t in tests["tests"]:
        assert t["name"] and t["timeout"] > 0
        parse_request(t["input"], allow_private_urls=False, max_batch=16)
    sample = json.loads((REPO / "test_input.json").read_text())
    req = parse_request(sample["input"], allow_private_urls=False)
    assert req.source.startswith("https://")
