# The engine's image for docker-compose.yml: `engine db migrate && engine serve` against the
# `db` service. The embedded database is not used in the image (ENGINE_DATABASE_URL is set).
FROM python:3.11-slim

# `pip install .` installs the package with its SQL (migrations, views, named queries).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ENGINE_RULES_PATH=/app/rules

WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
# Rules come from a volume: docker-compose.yml mounts ./rules here.
RUN pip install . \
    && mkdir -p /app/rules \
    && useradd --system --home-dir /app --no-create-home engine

USER engine
CMD ["sh", "-c", "engine db migrate && exec engine serve"]
