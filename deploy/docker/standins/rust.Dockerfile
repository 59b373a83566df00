# Stand-in for rust:1-bookworm: the Debian base, a C toolchain, and a Rust toolchain copied
# from the host by deploy/docker/standins.sh (the build context is its toolchain/ folder).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates gcc g++ libc6-dev make pkg-config perl \
 && rm -rf /var/lib/apt/lists/*
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY toolchain/ /usr/local/rust/
RUN mkdir -p "$CARGO_HOME/bin" && rustc --version && cargo --version
