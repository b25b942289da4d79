# GPU image of the RunPod worker: CUDA PyTorch base, ffmpeg, the Python packages, and the
# model baked in at build time (no hub access at run time).
#
#   docker build -t USER/whisper-runpod:1 .                       # openai/whisper-large-v3-turbo
#   docker build --build-arg MODEL_ID=openai/whisper-large-v3 -t USER/whisper-runpod:v3 .
#
# The base ships torch and torchaudio built for the same CUDA; they are never reinstalled
# (see the pip step). tests/test_bake.py runs this file's bake command on a tiny local
# checkpoint and checks that every COPY source exists and is let through .dockerignore.
ARG BASE_IMAGE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Python packages. The image's torch and torchaudio become constraints: a requirement that
# wanted another torch would make pip fail here rather than silently replace the CUDA build.
COPY requirements-gpu.txt /app/requirements-gpu.txt
RUN python -c "import torch, torchaudio; print(f'torch=={torch.__version__}\ntorchaudio=={torchaudio.__version__}')" > /tmp/torch-pins.txt \
    && pip install -c /tmp/torch-pins.txt -r /app/requirements-gpu.txt \
    && python -c "import torch, torchaudio; print(f'torch=={torch.__version__}\ntorchaudio=={torchaudio.__version__}')" | diff /tmp/torch-pins.txt - \
    && python -c "import transformers, runpod, aiohttp, numpy; print('transformers', transformers.__version__)"

# The model, fetched once at build time by the project's own command (only the two files it
# needs are copied first, so code changes below do not invalidate this layer).
ARG MODEL_ID=openai/whisper-large-v3-turbo
ARG MODEL_DTYPE=float16
COPY pipeline/__init__.py pipeline/bake.py /opt/bake/pipeline/
RUN cd /opt/bake \
    && python -m pipeline.bake "${MODEL_ID}" /models/whisper --dtype "${MODEL_DTYPE}" \
    && rm -rf /opt/bake /root/.cache/huggingface

# Run time: the baked copy, and no hub access at all.
ENV MODEL_ID=/models/whisper \
    MODEL_BATCH_SIZE=64 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    LOG_LEVEL=INFO

COPY pipeline/ /app/pipeline/
COPY stages/ /app/stages/
COPY runpod_entry.py test_input.json /app/

CMD ["python", "-u", "runpod_entry.py"]
