# The streaming-rag image: `streaming-rag` is the entry point, so the container's command is a
# subcommand, e.g. `docker run --rm -e REDIS_URL=redis://host:6379/0 streaming-rag worker
# --app streaming_rag_worker.demo_app:demo_app`. Configuration comes from the same env
# variables as the CLI:
# REDIS_URL, STREAMING_RAG_PREFIX, STREAMING_RAG_APP, STREAMING_RAG_CONCURRENCY,
# STREAMING_RAG_RETENTION_S, STREAMING_RAG_DOCS (see `streaming-rag --help`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# README.m[d]: copied when present (pyproject names it as the long description)
COPY pyproject.toml README.m[d] ./
COPY streaming_rag/ streaming_rag/
COPY worker/ worker/
COPY client/ client/
COPY cli/ cli/
RUN pip install .[web] \
    && cd / && rm -rf /src \
    && useradd --create-home --uid 10001 app

USER app
WORKDIR /home/app
ENTRYPOINT ["streaming-rag"]
CMD ["--help"]
