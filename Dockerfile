# syntax=docker/dockerfile:1
# Vision Models API: one GPU image for the API and the job worker (README: "Deployment").
#
#   docker build -t vision-api .
#   docker run --gpus all -p 8000:8000 -e HF_TOKEN vision-api                 # API
#   docker run --gpus all -e VISION_API_REDIS_URL=redis://redis:6379/0 vision-api worker
#
# The command is `vision-api <args>`: `serve ...` (the default) or `worker`. Volumes:
# /data/artifacts (VISION_API_ARTIFACTS_DIR: ONNX exports and the TensorRT engine cache under
# .trt-cache/<gpu>-trt<version>/, built on first use and reused across restarts) and /data/hf
# (HF_HOME: downloaded checkpoints). CUDA, cuDNN, torch, onnxruntime-gpu and TensorRT must agree:
# the defaults below are one such set (CUDA 12.8, torch cu128, onnxruntime-gpu's CUDA 12 build,
# whose TensorRT provider loads TensorRT 10). To move to CUDA 13, change the three together:
#   --build-arg CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 --build-arg TENSORRT=tensorrt-cu13-libs
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# The virtualenv's site-packages: follows the base image's Python (3.12 on Ubuntu 24.04).
ARG PYTHON_SITE=/opt/venv/lib/python3.12/site-packages

# ---- build: a virtualenv with the project and the GPU runtimes --------------------------------
FROM ${CUDA_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0
ARG ORT_GPU="onnxruntime-gpu>=1.22"
ARG TENSORRT="tensorrt-cu12-libs>=10.9,<11"
ARG PYTHON_SITE
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first: the largest layer, and it changes least often.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service service
COPY engines engines
COPY export export
# The project pulls the CPU onnxruntime; the GPU build replaces it (same module, one at a time).
# TensorRT's libraries come as wheels (tensorrt_libs/); the runtime stage puts them on the path.
# The project's own dependencies carry lower bounds in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install . \
    && pip uninstall -y onnxruntime \
    && pip install "${ORT_GPU}" "${TENSORRT}" \
    && ls "${PYTHON_SITE}"/tensorrt_libs/libnvinfer.so.* \
    && python -c "import onnxruntime, torch, service.app"

# ---- runtime: the CUDA runtime, Python, the virtualenv; no compilers, no pip cache ------------
FROM ${CUDA_IMAGE} AS runtime
LABEL org.opencontainers.image.title="vision-api" \
      org.opencontainers.image.description="Vision Models API: SAM3, GroundingDINO, Depth Anything, DINOv3" \
      org.opencontainers.image.licenses="Apache-2.0"

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/app app \
    && mkdir -p /data/artifacts /data/hf \
    && chown -R app:app /data

COPY --from=build /opt/venv /opt/venv
# tensorrt_libs: libnvinfer for onnxruntime's TensorRT provider.
ARG PYTHON_SITE
ENV PATH=/opt/venv/bin:$PATH \
    LD_LIBRARY_PATH=${PYTHON_SITE}/tensorrt_libs:${LD_LIBRARY_PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/data/hf \
    VISION_API_ARTIFACTS_DIR=/data/artifacts \
    VISION_API_HOST=0.0.0.0 \
    VISION_API_PORT=8000 \
    VISION_API_LOG_FORMAT=json \
    VISION_API_DEVICE=cuda

USER 10001:10001
WORKDIR /home/app
VOLUME ["/data/artifacts", "/data/hf"]
EXPOSE 8000

# Liveness of the API process; a worker container has no HTTP server: disable it there
# (docker-compose.yml does; Kubernetes ignores HEALTHCHECK and uses the Deployment's probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request as u; port = os.environ.get('VISION_API_PORT', '8000'); sys.exit(u.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=4).status != 200)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["vision-api"]
CMD ["serve"]
