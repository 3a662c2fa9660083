# Vision Models API image.
#   CPU:  docker build -t vision-api .
#   GPU:  docker build -t vision-api:gpu --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#           --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 --build-arg ORT=onnxruntime-gpu .
#         docker run --gpus all -p 8000:8000 -e HF_TOKEN -v hf-cache:/root/.cache/huggingface \
#           -v $PWD/artifacts:/app/artifacts vision-api:gpu
# TensorRT engines are cached under artifacts/.trt-cache (keyed by GPU and TensorRT version),
# so mount artifacts/ to keep them across restarts.
ARG BASE=python:3.12-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ORT=onnxruntime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    VISION_API_ARTIFACTS_DIR=/app/artifacts

RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
      && rm -rf /var/lib/apt/lists/*; fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY engines engines
COPY export export
RUN pip install --index-url ${TORCH_INDEX} "torch>=2.4" \
    && pip install . \
    && if [ "${ORT}" != "onnxruntime" ]; then pip uninstall -y onnxruntime && pip install "${ORT}"; fi

EXPOSE 8000
CMD ["vision-api", "serve", "--host", "0.0.0.0", "--port", "8000"]
