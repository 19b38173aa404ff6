# twilio-receiver container image.
#   podman build -t twilio-receiver .        (or docker build; add --network=host where needed)
# Build stage: the committed .sqlx/ lets sqlx's macros compile without a database.
FROM docker.io/library/rust:1.95-slim-bookworm AS builder
WORKDIR /app
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or Cargo.lock
# change, not on every source edit. Every [[bench]] of Cargo.toml needs a stub here
# (tests/packaging.rs checks it).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > benches/rules.rs \
 && echo 'fn main() {}' > benches/load.rs \
 && echo 'fn main() {}' > benches/backfill.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/deps/twilio_receiver* target/release/deps/libtwilio_receiver* \
           target/release/twilio-receiver* target/release/.fingerprint/twilio-receiver-*

COPY src src
COPY benches benches
COPY migrations migrations
COPY config config
COPY .sqlx .sqlx
RUN cargo build --release --locked --bin twilio-receiver

# Runtime stage: Debian slim, no compiler, no curl (the healthcheck is a subcommand).
# rustls means no OpenSSL is needed; ca-certificates is for TLS to a managed Postgres.
FROM docker.io/library/debian:bookworm-slim AS runtime
RUN (command -v update-ca-certificates >/dev/null \
      || (apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*)) \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=builder /app/target/release/twilio-receiver /usr/local/bin/twilio-receiver
# The default media archive and spool directories, owned by the app user so volumes mounted
# there are writable.
RUN mkdir -p /var/lib/twilio-receiver/media /var/lib/twilio-receiver/spool \
 && chown -R 10001 /var/lib/twilio-receiver
# default.toml is compiled in; the directory is where config/{APP_ENV}.toml overrides go.
COPY config config
USER 10001
ENV APP_ENV=production \
    TWILIO_RECEIVER__LOG__FORMAT=json \
    TWILIO_RECEIVER__SERVER__ADMIN_LISTEN=0.0.0.0:9090
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/twilio-receiver", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/twilio-receiver"]
CMD ["serve"]
