# The one image for migrate, worker, beat, flower, metrics and api (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUMBERS_RETENTION_DATA=/app/data

RUN groupadd --system --gid 10001 retention \
    && useradd --system --uid 10001 --gid retention --home-dir /app --shell /usr/sbin/nologin retention

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY worker ./worker
# A regular (non-editable) install: the migrations and the contract ship inside the package;
# with the api extra, for `numbers-retention serve` (the compose `api` service).
RUN pip install ".[api]" \
    && rm -rf build shared worker ./*.egg-info \
    && mkdir -p /app/data \
    && chown retention:retention /app/data

USER retention

ENTRYPOINT ["numbers-retention"]
CMD ["--help"]
