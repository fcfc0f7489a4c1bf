# syntax=docker.io/docker/dockerfile:1
# gpt2serve for a GPU node:  docker run --gpus all -p 8000:8000 IMAGE --model gpt2
#
# CUDA: the torch wheel pinned below (PyPI's default Linux build) brings its own CUDA user-space
# libraries as pip packages (cuBLAS, cuDNN, NCCL, NVRTC, ...) and Triton ships its own ptxas, so
# the image needs no CUDA toolkit: the small *-base* image is enough (the *-runtime* one would only
# add ~2 GB of libraries nothing loads). What the base image still decides is the driver check:
# its NVIDIA_REQUIRE_CUDA makes the NVIDIA container runtime refuse a host driver too old for that
# CUDA version, so keep its major equal to the wheel's. torch 2.13.0 on PyPI is built against
# CUDA 13.0 (host driver >= 580). Change the two together, e.g. for a CUDA 12 driver:
#   --build-arg CUDA_IMAGE=docker.io/nvidia/cuda:12.8.1-base-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (plus a TORCH_VERSION
#   that index carries).
# Images are named with their registry: a short name resolves through the builder's own search
# list (podman/buildah's registries.conf may ask, or pick another registry first).
ARG CUDA_IMAGE=docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# ARG, not ENV: apt-get needs it while building; containers should not inherit it.
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# DL3008: the CUDA base image pins the distribution; its python3/gcc are what torch supports.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# torch first, from the index whose CUDA build matches CUDA_IMAGE (TORCH_VERSION satisfies
# pyproject's torch requirement; torch pins its matching Triton).
RUN pip install --upgrade pip==25.1.1 \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
# Then every other dependency, exactly as locked and hash-checked (see requirements.lock's header),
# in a layer of its own: a change to the source reuses it instead of reinstalling them all.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
# The folders pyproject.toml maps into the one `gpt2serve` package (tests/deploy checks the list).
COPY pyproject.toml README.md ./
COPY src ./src
COPY server ./server
COPY model ./model
COPY kernels ./kernels
COPY loadtest ./loadtest
COPY benchmarks ./benchmarks
COPY acceptance ./acceptance
# --no-deps: nothing outside the locked set and torch gets installed (only setuptools is fetched,
# to build the wheel); `pip check` fails the build if what is installed does not satisfy
# pyproject.toml (a lock gone stale, the Triton torch brought out of range).
RUN pip install --no-deps . && pip check
# Fetch tiktoken's GPT-2 file at build time so the image starts without network access.
# DL3064: "TOKEN" here is tiktoken's cache path, not a secret.
# hadolint ignore=DL3064
ENV TIKTOKEN_CACHE_DIR=/opt/tiktoken
RUN python -c "import tiktoken; tiktoken.get_encoding('r50k_base')"

FROM ${CUDA_IMAGE}
# ARG, not ENV, as above: an ENV here would stay in the image's environment for every container.
ARG DEBIAN_FRONTEND=noninteractive
# Triton compiles a small C launcher per kernel signature at first use (then caches it under
# TRITON_CACHE_DIR), so a C compiler, libc headers and Python.h are needed at run time too; on
# `--device cpu` the C++ attention kernel is built once into TORCH_EXTENSIONS_DIR (g++).
# DL3008: as above, the base image pins the distribution's packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-dev gcc g++ libc6-dev curl ca-certificates \
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
    TORCH_EXTENSIONS_DIR=/cache/torch-extensions \
    PYTHONUNBUFFERED=1 \
    GPT2SERVE_HOST=0.0.0.0 \
    GPT2SERVE_PORT=8000
RUN mkdir -p /cache/huggingface /cache/triton /cache/inductor /cache/torch-extensions \
    && chown -R gpt2serve /cache
VOLUME ["/cache/huggingface", "/cache/triton", "/cache/inductor", "/cache/torch-extensions"]
USER 10001
WORKDIR /home/gpt2serve
EXPOSE 8000
# Through sh so the port follows GPT2SERVE_PORT (which the server reads too): set the port with
# `-e GPT2SERVE_PORT=...` rather than `--port` and the health check keeps up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["sh", "-c", "curl -fsS \"http://127.0.0.1:${GPT2SERVE_PORT:-8000}/health\" || exit 1"]
ENTRYPOINT ["gpt2serve"]
CMD ["--model", "gpt2", "--host", "0.0.0.0"]
