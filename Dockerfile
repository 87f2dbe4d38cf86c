# Build the wheel in one stage, run it on a slim Python base in the next.
# Multi-arch: `docker buildx build --platform linux/arm64,linux/amd64 .`
# (our own machines have no Docker engine; see docs/deployment.md).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin>=1.8,<2"
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust_core ./rust_core
COPY src ./src
RUN maturin build --release --locked -o /wheels

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --home-dir /var/lib/edgeloader --create-home edgeloader
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER edgeloader
ENV EDGELOADER_STATE_DIR=/var/lib/edgeloader \
    EDGELOADER_CACHE_DIR=/var/lib/edgeloader/models
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"
ENTRYPOINT ["edgeloader"]
CMD ["serve"]
