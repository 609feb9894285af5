#!/usr/bin/env bash
# The reference project's own client (tests/reference_client.py, its main.py with `requests`)
# against the release binary, run as `cargo run --release` runs it: 127.0.0.1:5000 and a fresh
# auth.db, here in a scratch directory so the checkout's own database is never touched.
# Proof that a client written for the Flask reference works unchanged. Exits non-zero if the
# client fails or the server does not stop cleanly on SIGTERM.
#
# The client talks to http://localhost:5000 while the server binds 127.0.0.1 only: requests
# (urllib3) tries every address localhost resolves to, so where ::1 comes first it is refused
# at once and 127.0.0.1 answers. The readiness check below goes through "localhost" too, so a
# host where that does not hold fails here, clearly, rather than in the middle of the client.
set -euo pipefail
cd "$(dirname "$0")/.."

source .ci/lib.sh

step "python3 with requests"
if ! python3 -c 'import requests' 2>/dev/null; then
    python3 -m pip install --quiet requests ||
        python3 -m pip install --quiet --user requests
    python3 -c 'import requests'
fi

step "cargo build --release"
cargo build --release
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/auth-service"

scratch=$(mktemp -d)
server_pid=
stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap stop_server EXIT

step "start the server on 127.0.0.1:5000 with a fresh $scratch/auth.db"
# The defaults, spelled out so that AUTH_* variables in the environment cannot move them.
(cd "$scratch" && exec "$bin" --bind 127.0.0.1:5000 --db auth.db) 2>"$scratch/server.log" &
server_pid=$!

ready=
for _ in $(seq 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the server exited at start:" >&2
        cat "$scratch/server.log" >&2
        exit 1
    fi
    if python3 - <<'EOF' 2>/dev/null; then
import requests
assert requests.get("http://localhost:5000/", timeout=1).json() == {"message": "Bienvenue"}
EOF
        ready=1
        break
    fi
    sleep 0.1
done
if [[ -z $ready ]]; then
    echo "the server did not answer on http://localhost:5000 within 10 s:" >&2
    cat "$scratch/server.log" >&2
    exit 1
fi

step "python3 tests/reference_client.py"
client_status=0
python3 tests/reference_client.py || client_status=$?

step "stop the server with SIGTERM"
kill -TERM "$server_pid"
server_status=0
wait "$server_pid" || server_status=$?
server_pid=

if [[ $client_status -ne 0 || $server_status -ne 0 ]]; then
    echo "reference client exited $client_status, server exited $server_status; server log:" >&2
    cat "$scratch/server.log" >&2
    exit 1
fi
echo "reference client passed; the server stopped cleanly"
