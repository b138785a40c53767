# The tagstream image: one image for every role (`worker`, `sink`, `replay`, `dlq replay`, ...).
#
#   docker build -t tagstream .                                  # CPU torch (about 1 GB smaller)
#   docker build -t tagstream --build-arg TORCH_INDEX=https://pypi.org/simple .   # CUDA torch
FROM python:3.11-slim

# Models and caches live in one volume (docker-compose.yml mounts it): Hugging Face's hub cache,
# Ultralytics' settings and weights, and tagstream's own cache (offline models).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TAGSTREAM_CACHE_DIR=/var/cache/tagstream \
    HF_HOME=/var/cache/tagstream/huggingface \
    YOLO_CONFIG_DIR=/var/cache/tagstream/ultralytics \
    YOLO_AUTOINSTALL=0 \
    UV_LINK_MODE=copy

# OpenCV (pulled in by ultralytics) needs these shared libraries even when headless.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip install --no-cache-dir "uv>=0.5"

# torch and torchvision first, both from the same index (a CPU torch with PyPI's CUDA
# torchvision fails at import), in their own layer so code changes do not re-download them.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN uv pip install --system --no-cache --index-url "$TORCH_INDEX" "torch>=2.4" "torchvision>=0.19"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY inference ./inference
COPY streams ./streams
RUN uv pip install --system --no-cache . \
    && useradd --system --uid 10001 --create-home tagstream \
    && mkdir -p /var/cache/tagstream \
    && chown tagstream /var/cache/tagstream

USER tagstream
# The worker's HTTP API, health, readiness and metrics (TAGSTREAM_WEB_HOST must be 0.0.0.0 to reach it).
EXPOSE 6066
ENTRYPOINT ["tagstream"]
CMD ["worker"]
