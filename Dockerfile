# capbot: run with `--network host` so it sees the host's traffic, not only the container's.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CAPBOT_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY capbot ./capbot
RUN pip install . \
    && useradd --system --uid 10001 --home /data --shell /usr/sbin/nologin capbot \
    && mkdir -p /data && chown capbot:capbot /data

USER capbot
VOLUME ["/data"]

# Healthy when the service has committed counters within the last few flush intervals.
HEALTHCHECK --interval=2m --timeout=20s --start-period=3m --retries=3 \
    CMD ["capbot", "health"]

ENTRYPOINT ["capbot"]
CMD ["run"]
