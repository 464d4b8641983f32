# Image for the trunkline services in compose.yaml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY edge edge
COPY streams streams
COPY media media
COPY schemas schemas
COPY trunkline trunkline
COPY examples examples
RUN pip install --no-cache-dir -c constraints.txt -e .
ENV TRUNKLINE_STATE_DIR=/var/lib/trunkline
