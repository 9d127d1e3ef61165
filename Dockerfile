# mixlab: one image for the API, the GPU worker and the one-shot migration.
#
#   docker build -t mixlab .                                  # torch from PyPI (CUDA build on x86_64)
#   docker build --build-arg TORCH_INDEX_URL=<index> -t mixlab .   # another torch build (CUDA version, CPU)
#
# The default command serves the API; `mixlab worker` and `mixlab migrate` run
# the other roles (see docker-compose.yml). Written for both BuildKit and the
# classic builder (no RUN --mount), so docker-compose 1.29 can build it too.

FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
# Empty: torch comes from PyPI like everything else. Set it to a PyTorch wheel
# index to pick another CUDA (or the CPU) build of the same version.
ARG TORCH_INDEX_URL=
# Optional packages, space-separated (s3fs, for s3:// stores and URIs, is in already).
ARG EXTRA_PIP=

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The real Fashion-MNIST files, under /usr/share/datasets/fashion-mnist/; g++ for
# training.compile (torch.compile's CPU backend builds its kernels with it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends dataset-fashion-mnist g++ \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 mixlab \
 && useradd --system --uid 10001 --gid mixlab --create-home --home-dir /home/mixlab \
      --shell /usr/sbin/nologin mixlab

# torch first and pinned: pyproject.toml declares a range. Its own layer, so a
# code change does not re-download it.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"; \
    else \
      pip install "torch==${TORCH_VERSION}"; \
    fi

WORKDIR /srv/mixlab

# README.md* : pyproject names a readme; the wildcard keeps the build working
# whether or not the file exists.
COPY pyproject.toml alembic.ini README.md* ./
COPY app ./app
COPY mixlab ./mixlab
COPY worker ./worker
COPY migrations ./migrations

# Then check that pip kept the pinned torch and that every role imports (from
# /tmp, so from site-packages). The sources also stay in /srv/mixlab, where
# `python -m celery` (the worker) imports them from the working directory: same
# code; precompiled here because the non-root user cannot write __pycache__.
# [vision]: the torchvision and timm model kinds, pinned in pyproject.toml to the
# releases built for this torch (pip keeps the pinned torch: they require it exactly);
# [s3]: s3fs, so the artifact store can be object storage shared across hosts;
# [ops]: Flower, for the compose `flower` profile
RUN pip install ".[vision,s3,ops]" \
 && if [ -n "$EXTRA_PIP" ]; then pip install $EXTRA_PIP; fi \
 && rm -rf build ./*.egg-info \
 && python -m compileall -q app mixlab worker migrations \
 && python -c "import sys, torch; v = torch.__version__.split('+')[0]; \
sys.exit(0 if v == '${TORCH_VERSION}' else f'torch {torch.__version__} != ${TORCH_VERSION}')" \
 && cd /tmp \
 && MIXLAB_DATA_DIR=/tmp/mixlab-import-check python -c "import app.api.main, worker.celery_app, worker.tasks, mixlab; \
from app.ml.models import timm_available, torchvision_available; \
assert torchvision_available() and timm_available(); \
from app.web.routes import PLOTLY_BUNDLE; assert PLOTLY_BUNDLE.is_file(), 'no plotly.js for /ui'; \
from app.services.sources import s3_available; assert s3_available(), 'no s3fs'; \
import flower" \
 && rm -rf /tmp/mixlab-import-check \
 && mixlab --help > /dev/null

# /data is where compose mounts the shared `artifacts` volume; an empty named
# volume takes this directory's ownership on first use, so the non-root user
# can write to it.
RUN mkdir -p /data/artifacts && chown -R mixlab:mixlab /data

ENV MIXLAB_DATA_DIR=/data \
    MIXLAB_ARTIFACT_URL=file:///data/artifacts

USER 10001:10001

EXPOSE 8000

# Liveness of the API (the default command). Compose overrides this for the
# worker and turns it off for the migration.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["mixlab", "api", "--host", "0.0.0.0", "--port", "8000"]
