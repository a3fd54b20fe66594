# culturectl service image: migrations, then the service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CULTURECTL_HOST=0.0.0.0 CULTURECTL_PORT=8000 CULTURECTL_DATA_DIR=/var/lib/culturectl

# Pango (with HarfBuzz's subsetter) and the DejaVu fonts: the batch record's PDF/A (WeasyPrint embeds the fonts).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 \
       fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY drivers ./drivers
COPY simulators ./simulators
COPY migrations ./migrations
RUN pip install . && useradd --system --home-dir /var/lib/culturectl --create-home culturectl

USER culturectl
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; \
sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
# Migrations first (idempotent), then the service; CULTURECTL_DATABASE_URL points at the server.
CMD ["sh", "-c", "culturectl db upgrade && exec culturectl serve"]
