# Multi-stage build: a release binary on a small Debian runtime, run as a non-root user.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY schema.graphql ./
# A member of the workspace: Cargo loads its manifest even though only the server is built.
COPY bench ./bench
RUN cargo build --release --locked && strip target/release/volcengine-ai-server

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /data app \
 && mkdir -p /data && chown app /data
COPY --from=build /src/target/release/volcengine-ai-server /usr/local/bin/volcengine-ai-server
USER app
WORKDIR /data
# Listening on 0.0.0.0 needs ADMIN_API_KEY (the server refuses to start there without keys):
#   docker run -e ADMIN_API_KEY=… -p 127.0.0.1:8080:8080 volcengine-ai-server
ENV HOST=0.0.0.0 PORT=8080 DATA_DIR=/data LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["volcengine-ai-server"]
CMD ["serve"]
