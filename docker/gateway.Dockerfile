# chat-gateway: the HTTP API and the browser UI (:8080), in front of the gRPC services.
# Build from the workspace root: docker build -f docker/gateway.Dockerfile -t chat/gateway .
#
# Everything down to the "service-specific" line is the same in every docker/*.Dockerfile, so
# the layer cache builds the toolchain, the dependencies and the shared crates (proto,
# common) once for all images, and an edit to one service rebuilds only that service's image.
# deploy/docker/build.sh refuses to build when the shared part differs between files.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS toolchain
# Extra CA certificates (*.crt), e.g. a TLS-intercepting proxy's, for cargo and the runtime.
COPY deploy/docker/ca/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null
ENV CARGO_TERM_COLOR=never \
    CARGO_TERM_PROGRESS_WHEN=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
WORKDIR /app

# The workspace with stub sources: changes only when a manifest or Cargo.lock does.
FROM toolchain AS skeleton
COPY . /src
RUN sh /src/deploy/docker/skeleton.sh /src /skeleton

FROM toolchain AS dependencies
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked --workspace --bins

# The crates every service uses. Sources are touched so cargo sees them as newer than the
# stubs it built from, whatever their modification times in the build context.
FROM dependencies AS shared
COPY proto/ proto/
COPY services/common/ services/common/
RUN find proto services/common -type f -exec touch {} + \
 && cargo build --release --locked --workspace --bins

# ---- service-specific from here ----
FROM shared AS build
COPY services/gateway/ services/gateway/
# The UI, compiled into the binary.
COPY web/ web/
RUN find services/gateway -type f -exec touch {} + \
 && cargo build --release --locked --workspace --bins

FROM ${RUNTIME_IMAGE}
RUN echo 'chat:x:10001:10001:chat:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'chat:x:10001:' >>/etc/group
COPY --from=toolchain /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /app/target/release/chat-gateway /usr/local/bin/chat-gateway
USER chat
# 8080: the service; 9080: GET /metrics.
EXPOSE 8080 9080
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/chat-gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/chat-gateway"]
