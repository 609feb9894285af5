#!/usr/bin/env bash
# The PostgreSQL half of the gate: clippy with the `postgres` feature, then the whole test
# suite again with every test server on its own database in a throwaway PostgreSQL cluster
# (tests/support reads AUTH_TEST_POSTGRES) and the multi-instance tests that only run there,
# then the scenario against a PostgreSQL-backed binary. Called from .ci/run; runs on its own
# too (bash .ci/postgres.sh).
#
# The cluster lives in a temporary directory, listens on loopback only, trusts local
# connections, and runs with fsync off: it holds nothing but test data and is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

source .ci/lib.sh

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ]; then
    apt_install postgresql
fi
BIN=$(pg_bin)

# The server refuses to run as root: as root, run it as the postgres user the package made.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The first free port from 55432.
port=55432
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done

data=$(mktemp -d /tmp/auth-ci-pg.XXXXXX)
socket_dir=$(mktemp -d /tmp/auth-ci-pgsock.XXXXXX)
if [ "$(id -u)" = 0 ]; then chown postgres: "$data" "$socket_dir"; fi
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    as_pg "$BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$data" "$socket_dir"
}
trap cleanup EXIT

step "PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
# A real UTF-8 locale, so that the tests show emails fold ASCII only whatever the database's
# locale (the schema pins the email column to "C").
as_pg "$BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null \
    || as_pg "$BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
as_pg "$BIN/pg_ctl" -D "$data" -l "$data/server.log" -w start -o \
    "-h 127.0.0.1 -p $port -k $socket_dir -c fsync=off -c synchronous_commit=off \
     -c full_page_writes=off -c max_connections=500" >/dev/null

export AUTH_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"

step "cargo clippy --all-targets --features postgres -- -D warnings"
cargo clippy --all-targets --features postgres -- -D warnings

step "AUTH_TEST_POSTGRES=$AUTH_TEST_POSTGRES cargo test --features postgres"
cargo test --features postgres

# Two instances on one database need PostgreSQL: a plain `cargo test` lists these as ignored.
step "cargo test --features postgres --test multi_instance -- --include-ignored"
cargo test --features postgres --test multi_instance -- --include-ignored

step "cargo run --features postgres --example main (against a PostgreSQL-backed binary)"
as_pg "$BIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE auth_ci_scenario"
cargo build --features postgres --bin auth-service
log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/auth-service" --bind 127.0.0.1:0 --bcrypt-cost 4 \
    --db "postgres://postgres@127.0.0.1:$port/auth_ci_scenario" 2>"$log" &
server_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then cat "$log"; exit 1; fi
cargo run --features postgres --example main -- "http://$addr"
kill "$server_pid"
wait "$server_pid"
server_pid=
rm -f "$log"
