# syntax=docker/dockerfile:1
#
# Image of the two services, dev-materiels and wagon-lits (both binaries of the `pipeline` crate).
# Compose chooses the binary with `command:`; see docker-compose.yml.
#
#   docker build -t rail-orders:latest .
#   docker run --rm rail-orders:latest dev-materiels --help
#
# The RUN --mount cache mounts need BuildKit (the default builder since Docker 23).

############################################################################### builder
FROM rust:1.88-bookworm AS builder

# The same build dependencies as scripts/setup.sh. librdkafka (rdkafka-sys, `ssl` feature) is
# built from its bundled sources with ./configure and make and linked against the system OpenSSL
# and zlib; it has no curl or zstd (those rdkafka features are off). RocksDB and lz4 are compiled
# from their crates' sources; bindgen loads libclang at build time.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libclang-dev pkg-config cmake make g++ zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The registry and target/ are cache mounts: a rebuild after a source change recompiles the
# workspace crates only, not RocksDB and librdkafka (a cold build takes about 17 minutes on 2 cores).
# The cache mount is not part of the image, so the binaries are copied out in the same RUN. The
# release profile keeps line tables for the workspace's own code only; the image gets the binaries
# without any debug info (`objcopy --strip-debug`). Symbols stay, so a panic's backtrace still
# names functions. `--no-default-features` leaves the tests' fault injection out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features -p pipeline --bin dev-materiels --bin wagon-lits \
 && mkdir -p /out \
 && for bin in dev-materiels wagon-lits; do \
        objcopy --strip-debug "target/release/$bin" "/out/$bin"; \
    done

############################################################################### runtime
FROM debian:bookworm-slim AS runtime

LABEL org.opencontainers.image.title="rail-orders" \
      org.opencontainers.image.description="dev-materiels (exactly-once stateful order processor) and wagon-lits (order API and materialised view) on Apache Kafka" \
      org.opencontainers.image.source="https://example.invalid/rail-orders" \
      org.opencontainers.image.licenses="Apache-2.0"

# What the binaries link dynamically (ldd): libssl3/libcrypto3 (librdkafka's TLS, via openssl-sys),
# zlib, libstdc++ (RocksDB and librdkafka are C/C++), libgcc_s and glibc. ca-certificates for
# `ssl`/`sasl_ssl` brokers with a public CA; curl for the compose health checks.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates libssl3 zlib1g libstdc++6 curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so that volume ownership is stable across rebuilds and hosts. The per-service
# directories exist in the image so that a fresh named volume mounted on one of them starts owned
# by rail (Docker copies the ownership of the mount point into an empty named volume).
RUN groupadd --system --gid 10001 rail \
 && useradd --system --uid 10001 --gid rail --home-dir /var/lib/rail --no-create-home \
        --shell /usr/sbin/nologin rail \
 && install -d -o rail -g rail -m 0750 /var/lib/rail /var/lib/rail/dev-materiels /var/lib/rail/wagon-lits

COPY --from=builder /out/dev-materiels /out/wagon-lits /usr/local/bin/

# Fails the build if a shared library is missing.
RUN dev-materiels --version && wagon-lits --version

# State stores (RocksDB): dev-materiels' per-partition stores and wagon-lits' view.
VOLUME ["/var/lib/rail"]

# dev-materiels' HTTP port and wagon-lits' API port, as docker-compose.yml sets them (HTTP_LISTEN).
EXPOSE 8081 3000

# The numeric form of rail:rail, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/rail

# No ENTRYPOINT: the command names the binary, e.g. `dev-materiels`, `wagon-lits serve`,
# `wagon-lits dlq list`. Both binaries handle SIGTERM themselves (dev-materiels commits its open
# transaction), so they run as PID 1 without an init.
CMD ["wagon-lits", "--help"]
