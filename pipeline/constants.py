"""Audio constants, defined once and derived (openai/whisper ``audio.py`` style).

Every stage and the stitcher import these; nothing else spells out 16000 or 480000.
"""

import numpy as np


def exact_div(x: int, y: int) -> int:
    """Integer division that must be exact (a wrong constant fails at import)."""
    assert x % y == 0, f"{x} is not divisible by {y}"
    return x // y


SAMPLE_RATE = 16000  # Hz, what Whisper's feature extractor expects
CHUNK_LENGTH = 30  # seconds in one Whisper window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
HOP_LENGTH = 160  # samples between mel frames
N_FRAMES = exact_div(N_SAMPLES, HOP_LENGTH)  # 3000 mel frames in a window
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token
# openai/whisper's no_speech_threshold: over it, the model thinks a window holds no speech
# (the quality review's no-speech rule; the end-of-text veto stays out of such windows).
NO_SPEECH_THRESHOLD = 0.6

PCM_DTYPE = np.dtype(np.float32)  # decoded audio: mono float32 in [-1, 1]
PCM_ITEMSIZE = PCM_DTYPE.itemsize  # bytes per sample; never write a literal 4
