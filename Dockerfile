# syntax=docker/dockerfile:1
# Multi-stage: build a wheel with build tools, install it into a clean venv, and ship only
# the venv on a slim base as a non-root user. `riposte run` is the exec-form entry point so
# SIGTERM from ECS or Kubernetes reaches the process and starts a graceful drain.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY sinks ./sinks
RUN python -m venv /opt/riposte \
 && /opt/riposte/bin/pip install --no-cache-dir --upgrade "pip==25.*" \
 && /opt/riposte/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="riposte" \
      org.opencontainers.image.description="Security-response pipeline for AWS" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH="/opt/riposte/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 riposte \
 && useradd --system --uid 10001 --gid riposte --home-dir /var/lib/riposte --create-home riposte
COPY --from=build /opt/riposte /opt/riposte
USER 10001:10001
WORKDIR /var/lib/riposte
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["riposte"]
CMD ["run", "--config", "/etc/riposte/riposte.toml"]
