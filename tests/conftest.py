import os

# Never reach for a model hub from the tests: a wrong id fails in seconds, not minutes.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import signal  # noqa: E402

import pytest  # noqa: E402

# The Ctrl-C tests send SIGINT to a CLI they start. A shell's background job (``pytest &``
# in a script, nohup) starts with SIGINT ignored, every child inherits that, and a CLI
# started so rightly ignores Ctrl-C: those tests then failed for how pytest was started.
# A handler here (not SIG_IGN) is reset to the default in every child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Whisper checkpoint on disk, loaded by from_pretrained like a real one."""
    from pipeline.synthetic import build_checkpoint

    d = tmp_path_factory.mktemp("tiny-whisper")
    build_checkpoint(d, "test")
    return d


@pytest.fixture(scope="session")
def real_tiny_dir():
    """Real tiny.en weights (pip package, converted once into the cache), for tests whose
    words matter: a random checkpoint's output is garbage that the quality review rightly
    drops. Skips where the weights are not installed (scripts/setup.sh installs them)."""
    from pipeline.weights import ModelResolveError, resolve_model

    try:
        return resolve_model("tiny.en")
    except ModelResolveError as exc:
        pytest.skip(f"tiny.en weights not installed: {exc}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (use with ``pytestmark`` or autouse): on 2 shared
    cores, torch's two spinning OpenMP threads run several times slower whenever another
    process is busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
