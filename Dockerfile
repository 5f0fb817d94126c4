# cutover: watch a live migration between two platforms. Multi-stage: the build tools stay behind.
#   podman build -t cutover .   (or docker build)
#   docker run -v ./cutover.yml:/config/cutover.yml:ro -p 9877:9877 cutover
# For reproducible builds, pin the base by digest too: python:3.12-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=docker.io/library/python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/cutover
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
# a regular (not editable) install: the runtime stage copies the virtualenv alone
RUN /opt/cutover/bin/pip install '.[uvloop]' \
    && /opt/cutover/bin/cutover --version

FROM ${PYTHON_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="cutover" \
      org.opencontainers.image.description="Watch a live migration: probe both platforms, judge the candidate, export to Prometheus, alert in Slack." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/cutover /opt/cutover
# state_dir: alert and notification state that survives restarts (mount a volume here)
RUN install -d -o 10001 -g 10001 -m 0750 /var/lib/cutover
ENV PATH=/opt/cutover/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/cutover
# a numeric user, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd
USER 10001:10001
EXPOSE 9877
# No curl in the image: Python asks /-/healthy. Set CUTOVER_HEALTHCHECK_URL with another port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('CUTOVER_HEALTHCHECK_URL', 'http://127.0.0.1:9877/-/healthy'), timeout=4)"]
ENTRYPOINT ["cutover"]
CMD ["run", "--config", "/config/cutover.yml"]
