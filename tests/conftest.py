import os

# Never reach for a model hub from the tests: a wrong id fails in seconds, not minutes.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Whisper checkpoint on disk, loaded by from_pretrained like a real one."""
    from pipeline.synthetic import build_checkpoint

    d = tmp_path_factory.mktemp("tiny-whisper")
    build_checkpoint(d, "test")
    return d
