# The service image, for amd64 and arm64 from one build:
#
#   docker buildx build --platform linux/arm64,linux/amd64 -t edgeloader .
#
# The wheel stage runs on the build machine's own architecture
# ($BUILDPLATFORM) and cross-builds for the image's ($TARGETARCH) with zig as
# linker and C compiler (aws-lc-sys compiles C): the route of `make
# wheel-arm64`, with rustup's toolchain instead of Debian's. No compiler runs
# under emulation; only the last stage's RUN steps do, for the foreign
# architecture. The wheel is the one the boxes install: manylinux_2_31.
# (Our own machines have no Docker engine; see docs/deployment.md.)

FROM --platform=$BUILDPLATFORM python:3.11-slim-bookworm AS build
ARG TARGETARCH
ARG RUST_VERSION=1.95.0
# maturin as in requirements/dev.lock; zig as in scripts/cross-arm64.sh.
ARG MATURIN_VERSION=1.16.0
ARG ZIG_VERSION=0.15.2
# glibc 2.31 is the oldest the boxes run (Ubuntu 20.04, JetPack 5).
ARG MANYLINUX=manylinux_2_31
# gcc links the build scripts, which run here; zig compiles for the target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN case "$TARGETARCH" in \
        amd64) echo x86_64-unknown-linux-gnu ;; \
        arm64) echo aarch64-unknown-linux-gnu ;; \
        *) echo "unsupported architecture: $TARGETARCH" >&2; exit 1 ;; \
    esac > /rust-target
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
        --default-toolchain "$RUST_VERSION" --target "$(cat /rust-target)"
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin==${MATURIN_VERSION}" "ziglang==${ZIG_VERSION}"
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust_core ./rust_core
COPY src ./src
RUN maturin build --release --locked --target "$(cat /rust-target)" --zig \
        --compatibility "$MANYLINUX" --auditwheel check -o /wheels

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
