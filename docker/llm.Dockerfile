# chat-llm: Chat Completions through OpenAI or any compatible server, or the mock (gRPC :50055).
# Build from the workspace root: docker build -f docker/llm.Dockerfile -t chat/llm .
#
# Everything down to the "service-specific" line is the same in every docker/*.Dockerfile, so
# the layer cache builds the toolchain, cargo-chef, the dependencies and the shared crates
# (proto, common) once for all images, and an edit to one service rebuilds only that service's
# image. deploy/docker/build.sh refuses to build when the shared part differs between files.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# Extra CA certificates (*.crt), e.g. a TLS-intercepting proxy's, for cargo and the runtime.
COPY deploy/docker/ca/ /usr/local/share/ca-certificates/extra/
RUN update-ca-certificates >/dev/null
# The same profile settings in every stage: cargo rebuilds what was built with others.
ENV CARGO_TERM_COLOR=never \
    CARGO_TERM_PROGRESS_WHEN=never \
    CARGO_INCREMENTAL=0 \
    CARGO_NET_RETRY=5 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /app

# The recipe: every manifest and Cargo.lock, nothing else. It changes only when they do, so
# the next stage stays cached across source edits. The recipe's manifests are rewritten
# (without [lints], the workspace's own versions masked), so the real ones are kept aside for
# the builds of real sources.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json \
 && mkdir /tmp/manifests \
 && find . -name Cargo.toml -o -name Cargo.lock | xargs cp --parents -t /tmp/manifests

# The workspace with stub sources, built: exactly the third-party dependencies. The same
# package selection as the builds below, so that features unify the same way.
FROM chef AS dependencies
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --workspace --bins --recipe-path recipe.json

# The crates every service uses (the services themselves are still stubs here).
FROM dependencies AS shared
COPY --from=planner /tmp/manifests/ ./
COPY proto/ proto/
COPY services/common/ services/common/
RUN cargo build --release --locked --workspace --bins

# ---- service-specific from here ----
FROM shared AS build
# The service's sources are touched so cargo sees them as newer than the stub it built in the
# stage above, whatever their modification times in the build context.
COPY services/llm/ services/llm/
RUN find services/llm -type f -exec touch {} + \
 && cargo build --release --locked --workspace --bins

FROM ${RUNTIME_IMAGE}
RUN echo 'chat:x:10001:10001:chat:/nonexistent:/usr/sbin/nologin' >>/etc/passwd \
 && echo 'chat:x:10001:' >>/etc/group
COPY --from=chef /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /app/target/release/chat-llm /usr/local/bin/chat-llm
USER chat
# 50055: the service; 9055: GET /metrics.
EXPOSE 50055 9055
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/chat-llm", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/chat-llm"]
