# syntax=docker/dockerfile:1
# gpt2serve for a GPU node:  docker run --gpus all -p 8000:8000 IMAGE --model gpt2
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# DL3008: the CUDA base image pins the distribution; its python3/gcc are what torch supports.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
COPY model ./model
COPY kernels ./kernels
COPY loadtest ./loadtest
# torch's default Linux wheel is the CUDA build, with Triton alongside.
RUN pip install --upgrade pip==25.1.1 && pip install .
# Fetch tiktoken's GPT-2 file at build time so the image starts without network access.
# DL3064: "TOKEN" here is tiktoken's cache path, not a secret.
# hadolint ignore=DL3064
ENV TIKTOKEN_CACHE_DIR=/opt/tiktoken
RUN python -c "import tiktoken; tiktoken.get_encoding('r50k_base')"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# DL3008: as above, the base image pins the distribution's packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 gpt2serve
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tiktoken /opt/tiktoken
# DL3064: TIKTOKEN_CACHE_DIR is a cache path, not a secret.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    TIKTOKEN_CACHE_DIR=/opt/tiktoken \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton \
    TORCHINDUCTOR_CACHE_DIR=/cache/inductor \
    PYTHONUNBUFFERED=1 \
    GPT2SERVE_HOST=0.0.0.0 \
    GPT2SERVE_PORT=8000
RUN mkdir -p /cache/huggingface /cache/triton /cache/inductor && chown -R gpt2serve /cache
VOLUME ["/cache/huggingface", "/cache/triton"]
USER 10001
WORKDIR /home/gpt2serve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["gpt2serve"]
CMD ["--model", "gpt2", "--host", "0.0.0.0"]
