#!/usr/bin/env bash
# schemathesis (PyPI, pinned) against the release binary, driven by openapi.yaml: every check
# it has (`--checks all`), every phase (examples, coverage, fuzzing, and the stateful phase,
# which follows the document's links: register -> log in -> profile / log out, reset request
# -> reset -> log in), a fixed number of examples per operation and a fixed seed, so a run is
# repeatable. Fails on any failed check, any 5xx, or a server that stops answering.
# Called from .ci/run; runs on its own too (bash .ci/schemathesis.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.32.5
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-100}
SEED=${SCHEMATHESIS_SEED:-20261124}

# Its own virtualenv under target/ (ignored by git), reused while it holds the pinned version.
venv=target/ci-schemathesis
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "version $VERSION\$"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi
"$venv/bin/schemathesis" --version

cargo build --release --quiet

tmp=$(mktemp -d /tmp/auth-ci-schemathesis.XXXXXX)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# bcrypt at cost 4 so that the thousand-odd logins and registrations take seconds, and a
# throttle so high and the abuse limits off, so that 429 (documented, and valid) does not crowd
# out the other answers: schemathesis sends every request from one address.
# The log exists before the server starts: the loop below may read it before the background
# job has opened it, and a missing file would end this script (set -e) with sed's exit 2.
: >"$tmp/server.log"
target/release/auth-service --bind 127.0.0.1:0 --db "$tmp/auth.db" --bcrypt-cost 4 \
    --max-login-failures 1000000 --max-registrations 0 --max-reset-requests 0 \
    --metrics 2>"$tmp/server.log" &
server_pid=$!
addr=
for _ in $(seq 100); do
    addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$tmp/server.log")
    [ -n "$addr" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log"; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start within 10 s"; cat "$tmp/server.log"; exit 1; }

# Valid data for POST /users can name an address already registered, which the reference's
# API answers 400 ("email already registered"): schemathesis draws the same small addresses
# again and again. Every other operation keeps the default expectations.
# No cache of earlier failures to replay (it would live in the work tree): each run is only its
# seed.
cat >"$tmp/schemathesis.toml" <<'TOML'
[cache]
enabled = false

[[operations]]
include-operation-id = "registerUser"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
TOML

# ASCII strings only: JSON Schema's maxLength counts characters, and the service's limits
# (254-byte emails, 72-byte passwords) count UTF-8 bytes, which the document can only say in
# words. Multi-byte input is covered by tests/properties.rs and the fuzz targets.
status=0
timeout 900 "$venv/bin/schemathesis" --config-file "$tmp/schemathesis.toml" \
    run openapi.yaml --url "http://$addr" \
    --checks all --max-examples "$EXAMPLES" --seed "$SEED" \
    --generation-codec ascii --generation-database none \
    --workers 1 --request-timeout 10 --no-color \
    --report junit --report-dir "$tmp/report" | tee "$tmp/out.txt" || status=$?

cases=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$tmp/out.txt" | tail -n 1)
echo "schemathesis: ${cases:-?} test cases, seed $SEED, $EXAMPLES examples per operation"
# The access log: method, path, status, milliseconds, client address. No 5xx of any kind.
if grep -Eq '^(error: | *[A-Z]+ .* 5[0-9][0-9] [0-9.]+ms [0-9a-f.:]+$)' "$tmp/server.log"; then
    echo "the server answered 5xx or logged internal errors:"
    grep -E '^(error: | *[A-Z]+ .* 5[0-9][0-9] [0-9.]+ms [0-9a-f.:]+$)' "$tmp/server.log" | head -n 20
    status=1
fi
echo "requests answered: $(grep -Ec ' [0-9]{3} [0-9.]+ms [0-9a-f.:]+$' "$tmp/server.log")"
if ! curl -fsS -m 5 "http://$addr/health" >/dev/null; then
    echo "the server no longer answers /health"
    tail -n 20 "$tmp/server.log"
    status=1
fi
exit "$status"
