"""What multiprocessing's fork server imports once, so that an infer stage forked from it
starts without importing torch and transformers again.

A spawned infer stage spends most of its start in imports: torch, transformers and
Whisper's modelling code take ~8 s of CPU on 2 cores, ~10x the model load of tiny.en. A
process that starts several pipelines (a server restarting one after a stage died,
a script comparing pipelines side by side, the tests) paid that every time. The driver starts each later infer
stage from a fork server (``pipeline.runtime.driver._infer_context``) that imported this
module once; the fork shares the imported code copy-on-write and is ready in a fraction
of a second.

Importing this module must leave the process safe to fork:
  * no CUDA. The CUDA driver does not survive a fork, and ``torch.cuda.is_available()``
    initialises it unless told to ask NVML instead (PyTorch's fork-safe check, set below;
    a forked stage takes the driver's environment back at its start). Nothing here calls
    into CUDA: tests/test_pipeline.py checks that importing this module never touches
    ``torch.cuda``.
  * no OpenMP pool. torch's intra-op pool starts at the first parallel op; nothing here
    runs one. (numpy's and scipy's OpenBLAS start threads at import, and OpenBLAS is
    fork-safe: it re-creates its pool in the child, as under the ``fork`` start method.)
  * one malloc arena, set before those threads exist: the infer stage wants one
    (see ``pipeline.runtime.process._one_malloc_arena``), and arenas the fork server's
    threads made would be inherited by the stage. That is why this module lives outside
    ``pipeline.runtime``, whose package imports numpy first.

This module is for the fork server; importing it anywhere else is harmless but slow.
"""

import ctypes
import os

try:
    ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX = 1, before any thread starts
except (OSError, AttributeError):  # not glibc
    pass
os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

try:
    import torch  # noqa: F401
    import transformers.models.whisper.modeling_whisper  # noqa: F401

    import pipeline.runtime.process  # noqa: F401 - the stage entry point and its loops
    import stages.engine  # noqa: F401
    import stages.infer  # noqa: F401
except Exception:  # noqa: BLE001 - the server would die of it (it only forgives ImportError)
    # and the next pipeline's start with it; an infer stage forked without these imports
    # does them itself and reports what fails, with its stage name, as a spawned one does.
    pass
