# syntax=docker/dockerfile:1
# videodb-token-broker: multi-stage, slim runtime, fixed non-root uid, no secret in any layer.
# Settings (VIDEO_DB_API_KEY, BROKER_*) come from the environment at run time, never build args.

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Two environments: /opt/build holds pip and the locked setuptools that builds the broker's
# wheel, and stays in this stage; /opt/venv, made without pip, is what the image carries.
# Everything is installed exactly as locked, hashes checked, with --no-deps: nothing is
# resolved against the index, so a release made after the lock cannot change the image.
# Pinned dependencies first, so that code changes do not invalidate this layer.
COPY requirements-build.lock requirements.lock ./
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-deps --require-hashes -r requirements-build.lock \
    && python -m venv --without-pip /opt/venv \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --require-hashes \
       -r requirements.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
    && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --no-index \
       /tmp/wheels/*.whl \
    && /opt/build/bin/pip --python /opt/venv/bin/python check \
    && /opt/venv/bin/python -m compileall -q /opt/venv

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin broker
# Only the virtual environment (with the installed app) is copied: no sources, no tests.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080
WORKDIR /srv
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "app.healthcheck", "/healthz"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["token-broker", "serve", "--host", "0.0.0.0"]
