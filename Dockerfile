# The service image, for amd64 and arm64 from one build:
#
#   docker buildx build --platform linux/arm64,linux/amd64 -t edgeloader .
#
# A plain `docker build .` (Docker's legacy builder, no BuildKit) and
# `podman build .` build it too, for the machine's own architecture.
#
# The wheel stage runs on the build machine's own architecture
# ($BUILDPLATFORM) and cross-builds for the image's ($TARGETARCH) with zig as
# linker and C compiler (aws-lc-sys compiles C): the route of `make
# wheel-arm64`, with rustup's toolchain instead of Debian's. No compiler runs
# under emulation; only the last stage's RUN steps do, for the foreign
# architecture. The wheel is the one the boxes install: manylinux_2_31.
#
# `--target prebuilt` installs a wheel already built (`make wheel`) from the
# context's dist/ instead, and BASE_IMAGE names another Python 3.11 base:
# that is how `make test` builds this file on a machine without a registry
# or rustup (tests/integration/test_image.py; docs/deployment.md).

# The runtime's base: Debian 12 with Python 3.11 at `python` and `pip`.
ARG BASE_IMAGE=python:3.11-slim-bookworm
# BuildKit sets BUILDPLATFORM. Docker's legacy builder leaves it empty and
# refuses an empty FROM --platform; podman 4.3 leaves it empty here too and
# refuses an OS without an architecture, so the fallback must name both.
# On an ARM64 machine without BuildKit, pass --build-arg BUILD_PLATFORM=linux/arm64.
ARG BUILD_PLATFORM=linux/amd64

# -- prebuilt: the wheel from dist/ (`--target prebuilt`) -----------------
# Only with --target does this stage matter. Docker's legacy builder builds
# every stage before the one it is asked for, so without a wheel in dist/
# this stage does nothing and says so rather than fail a plain build.
FROM $BASE_IMAGE AS prebuilt
# The settings come before the install: a builder without copy-on-write
# storage (Docker's legacy builder on vfs) copies the whole image for each
# instruction, and the image is smaller before the install.
ENV EDGELOADER_STATE_DIR=/var/lib/edgeloader \
    EDGELOADER_CACHE_DIR=/var/lib/edgeloader/models
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"
ENTRYPOINT ["edgeloader"]
CMD ["serve"]
# PIP_NO_INDEX=1: dist/ also holds every dependency's wheel (a box or a
# build without an index).
ARG PIP_NO_INDEX
# pyproject.toml is named so that the copy has a source when dist/ is absent.
COPY pyproject.toml dist* /wheels/
RUN useradd --system --uid 10001 --home-dir /var/lib/edgeloader --create-home edgeloader \
    && if ls /wheels/edgeloader-*.whl >/dev/null 2>&1; then \
        pip install --no-cache-dir --no-index --no-deps --find-links /wheels edgeloader \
        && pip install --no-cache-dir --find-links /wheels edgeloader; \
    else \
        echo "prebuilt: no edgeloader wheel in dist/ (run make wheel): nothing installed" >&2; \
    fi \
    && rm -rf /wheels
USER edgeloader

# -- build: the wheel, from source -----------------------------------------
FROM --platform=${BUILDPLATFORM:-$BUILD_PLATFORM} python:3.11-slim-bookworm AS build
# Empty under Docker's legacy builder: then the stage's own architecture,
# which is the machine's and so the image's.
ARG TARGETARCH
ARG RUST_VERSION=1.95.0
# maturin as in requirements/dev.lock; zig as in scripts/cross-arm64.sh.
ARG MATURIN_VERSION=1.16.0
ARG ZIG_VERSION=0.15.2
# glibc 2.31 is the oldest the boxes run (Ubuntu 20.04, JetPack 5).
ARG MANYLINUX=manylinux_2_31
RUN case "${TARGETARCH:-$(dpkg --print-architecture)}" in \
        amd64) echo x86_64-unknown-linux-gnu ;; \
        arm64) echo aarch64-unknown-linux-gnu ;; \
        *) echo "unsupported architecture: ${TARGETARCH:-$(dpkg --print-architecture)}" >&2; exit 1 ;; \
    esac > /rust-target
# gcc links the build scripts, which run here; zig compiles for the target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# Downloaded first, not piped: a pipe's status is sh's, so a failed
# download would pass this step with no Rust installed.
RUN curl -sSf https://sh.rustup.rs -o /tmp/rustup-init.sh \
    && sh /tmp/rustup-init.sh -y --profile minimal \
        --default-toolchain "$RUST_VERSION" --target "$(cat /rust-target)" \
    && rm /tmp/rustup-init.sh
ENV PATH="/root/.cargo/bin:${PATH}"
RUN pip install --no-cache-dir "maturin==${MATURIN_VERSION}" "ziglang==${ZIG_VERSION}"
WORKDIR /src
COPY Cargo.toml Cargo.lock pyproject.toml README.md ./
COPY rust_core ./rust_core
COPY src ./src
RUN maturin build --release --locked --target "$(cat /rust-target)" --zig \
        --compatibility "$MANYLINUX" --auditwheel check -o /wheels

# -- the image (the default target) ----------------------------------------
FROM $BASE_IMAGE
ENV EDGELOADER_STATE_DIR=/var/lib/edgeloader \
    EDGELOADER_CACHE_DIR=/var/lib/edgeloader/models
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"
ENTRYPOINT ["edgeloader"]
CMD ["serve"]
COPY --from=build /wheels /wheels
RUN useradd --system --uid 10001 --home-dir /var/lib/edgeloader --create-home edgeloader \
    && pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER edgeloader
