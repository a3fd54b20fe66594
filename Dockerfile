# culturectl service image: migrations, then the service.
# Every Python package comes from a hash-pinned lock (.ci/requirements.lock, .ci/requirements-build.lock; made by
# .ci/lock.py for this base image's CPython 3.11 on x86_64): pip refuses any file whose sha256 differs.

# The wheel is built in its own stage, with the build backend from its lock: no build tool in the service image.
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY .ci/requirements-build.lock /tmp/requirements-build.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements-build.lock
COPY pyproject.toml README.md ./
COPY app ./app
COPY drivers ./drivers
COPY simulators ./simulators
COPY migrations ./migrations
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CULTURECTL_HOST=0.0.0.0 CULTURECTL_PORT=8000 CULTURECTL_DATA_DIR=/var/lib/culturectl

# Pango (with HarfBuzz's subsetter) and the DejaVu fonts: the batch record's PDF/A (WeasyPrint embeds the fonts).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 \
       fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

# The runtime dependencies exactly as locked, then culturectl itself without resolving anything; pip check proves
# the lock complete. The image's own bill of materials (CycloneDX: every Python distribution with its wheel's
# sha256, the interpreter, the Debian packages) is written beside the lock; `docker cp` or `docker run ... cat` it.
COPY .ci/requirements.lock /usr/share/culturectl/requirements.lock
RUN pip install --require-hashes --no-deps -r /usr/share/culturectl/requirements.lock
COPY --from=wheel /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist && pip check \
    && culturectl sbom --image --lock /usr/share/culturectl/requirements.lock \
       --output /usr/share/culturectl/sbom.cdx.json \
    && useradd --system --home-dir /var/lib/culturectl --create-home culturectl

WORKDIR /app
COPY alembic.ini ./
USER culturectl
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; \
sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
# Migrations first (idempotent), then the service; CULTURECTL_DATABASE_URL points at the server.
CMD ["sh", "-c", "culturectl db upgrade && exec culturectl serve"]
