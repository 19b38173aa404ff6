# Sourced by bench/run.sh and bench/instructions.sh: starting and stopping the release server
# the way the benchmarks run it. Needs PGURL, DB, PORT, RULES and a scratch directory $work;
# BIN (${CARGO_TARGET_DIR:-target}/release/twilio-receiver, where cargo builds it) names
# another build of the server; SERVER_ENV holds more NAME=value settings for it
# (bench/run.sh's RECONCILE=1).
servers=()

# Starts server number $1 (0, 1, ...) on PORT + $1, each with its own spool, and waits until
# it accepts connections. Further arguments are a command to run the server under
# (valgrind, say).
start_server() {
  local n=$1 port=$((PORT + $1)) pid
  shift
  mkdir -p "$work/spool$n"
  # shellcheck disable=SC2086 # SERVER_ENV is a list of NAME=value words
  TWILIO_AUTH_TOKEN=bench-token \
  TWILIO_RECEIVER__SERVER__PUBLIC_URL=https://hooks.example.com \
  TWILIO_RECEIVER__SERVER__LISTEN=127.0.0.1:$port \
  TWILIO_RECEIVER__SERVER__ADMIN_LISTEN=127.0.0.1:0 \
  TWILIO_RECEIVER__SPOOL__DIR="$work/spool$n" \
  TWILIO_RECEIVER__RULES__PATH="$RULES" \
  DATABASE_URL="$PGURL/$DB" RUST_LOG=warn \
    env ${SERVER_ENV:-} "$@" "${BIN:-${CARGO_TARGET_DIR:-target}/release/twilio-receiver}" serve >"$work/log$n" 2>&1 &
  pid=$!
  servers+=("$pid")
  # Migrations run before the listener is bound, so an accepted connection means ready.
  # (bash's /dev/tcp: no process per attempt, so the wait measures the server, not us.)
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$work/log$n"; exit 1; }
  done
}

stop_servers() {
  kill -TERM "${servers[@]}"
  for pid in "${servers[@]}"; do wait "$pid" || true; done
  servers=()
}
