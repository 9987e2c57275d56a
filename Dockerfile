# kairos gateway image. The same image also runs the demo services (python -m kairos.demo).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KAIROS_CONFIG_PATH=/etc/kairos/config.json

WORKDIR /src
COPY pyproject.toml README.md ./
COPY kairos ./kairos
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin kairos \
    && mkdir -p /etc/kairos

# A default config that listens on 0.0.0.0:5900; mount your own over it.
COPY configs/compose.json /etc/kairos/config.json

WORKDIR /
USER kairos
EXPOSE 5900

# No curl in the slim image: probe /health with the Python standard library.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5900/health', timeout=2).status == 200 else 1)"]

STOPSIGNAL SIGTERM
CMD ["kairos", "serve", "--config", "/etc/kairos/config.json"]
