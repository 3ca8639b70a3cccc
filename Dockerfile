# One image for every mss process (relay, web, CLI); docker-compose.yml runs several of each.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends openssl && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mss ./mss
COPY directory ./directory
COPY cli ./cli
RUN pip install --no-cache-dir .
RUN useradd --system --home /var/lib/mss mss && mkdir -p /var/lib/mss && chown mss /var/lib/mss
USER mss
ENV MSS_DATA_DIR=/var/lib/mss MSS_CERTS_DIR=/var/lib/mss/certs
ENTRYPOINT ["mss"]
