# Build stage: compile a release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked && strip target/release/switchboard

# Runtime stage: a small image running as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --create-home switchboard
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY bot-configs /etc/switchboard/bot-configs
COPY locales /etc/switchboard/locales
USER switchboard
WORKDIR /data
ENV SWITCHBOARD_CONFIG=/etc/switchboard/bot-configs \
    DATABASE_URL=sqlite:///data/switchboard.db \
    SWITCHBOARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
VOLUME ["/data"]
HEALTHCHECK --interval=30s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["switchboard"]
CMD ["run"]
