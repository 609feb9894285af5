#!/usr/bin/env bash
# The deployment, checked: deploy/nginx.conf run by a real nginx (Debian's) in front of the
# release binary started as deploy/auth-service.service starts it (--trust-proxy
# --secure-cookies), with a certificate from a throwaway CA. Through it over HTTPS: the whole
# scenario (examples/main.rs, trusting that CA through AUTH_CA_CERT), the Secure cookie, the
# HTTP-to-HTTPS redirect and HSTS, the login throttle keyed on the address nginx saw and not
# on a forged X-Forwarded-For (and logged, in JSON, with the address nginx saw), metrics kept
# off the proxy, JSON 413 and 503 from nginx; the README's online backup of the serving
# database with `auth-service backup` under registration load, `auth-service check` of the
# copy, and its restore. And systemd-analyze verifies the unit file.
#
# Everything listens on 127.0.0.1 only, in a temporary directory removed on exit.
# Called from .ci/run; runs on its own too (bash .ci/nginx.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

source .ci/lib.sh

missing=
for tool in nginx openssl curl; do command -v "$tool" >/dev/null || missing=1; done
if [ -n "$missing" ]; then
    apt_install nginx openssl curl
fi
nginx -v

cargo build --release --quiet
cargo build --quiet --example main

tmp=$(mktemp -d /tmp/auth-ci-nginx.XXXXXX)
chmod 755 "$tmp"
service_pid=
nginx_pid=
cleanup() {
    for pid in $nginx_pid $service_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

step "systemd-analyze verify deploy/auth-service.service"
if command -v systemd-analyze >/dev/null; then
    # The unit as written, but for the binary's path here.
    sed "s|/usr/local/bin/auth-service|$PWD/target/release/auth-service|" \
        deploy/auth-service.service >"$tmp/auth-service.service"
    systemd-analyze verify "$tmp/auth-service.service" >"$tmp/verify.txt" 2>&1 || true
    # It exits 0 on unknown keys; any word from it is a defect in the unit.
    if [ -s "$tmp/verify.txt" ]; then
        cat "$tmp/verify.txt"
        fail "systemd-analyze has something to say about the unit"
    fi
    echo "the unit verifies clean"
else
    echo "systemd-analyze is not installed: skipped"
fi

# A port nothing listens on yet, from $1 up.
free_port() {
    local port=$1
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    echo "$port"
}

step "a CA, and a certificate it signs for 127.0.0.1"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=auth-service CI CA" \
    -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' \
    >"$tmp/server.ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
    -CAcreateserial -days 2 -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null
openssl verify -CAfile "$tmp/ca.pem" "$tmp/server.pem"

step "auth-service --trust-proxy --secure-cookies --log-format json on 127.0.0.1"
# As the unit runs it, but for a cheap bcrypt and a throttle that trips after 3 failures.
export AUTH_DB="$tmp/auth.db"
# Created first: the loop below may read it before the background job has opened it.
: >"$tmp/service.log"
target/release/auth-service --bind 127.0.0.1:0 --trust-proxy --secure-cookies --metrics \
    --log-format json --bcrypt-cost 4 --max-login-failures 3 2>"$tmp/service.log" &
service_pid=$!
service_addr=
for _ in $(seq 100); do
    service_addr=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$tmp/service.log")
    [ -n "$service_addr" ] && break
    kill -0 "$service_pid" 2>/dev/null || { cat "$tmp/service.log"; fail "the service died"; }
    sleep 0.1
done
[ -n "$service_addr" ] || fail "the service did not start within 10 s"
echo "service on $service_addr"

step "nginx with deploy/nginx.conf"
https_port=$(free_port 58443)
http_port=$(free_port 58080)
# deploy/nginx.conf with this run's addresses, ports and certificate; each substitution must
# happen exactly as planned, or the file changed and this script must follow.
sed -e "s|server 127.0.0.1:5000;|server $service_addr;|" \
    -e "s|^\( *\)listen 80;|\1listen 127.0.0.1:$http_port;|" \
    -e "s|^\( *\)listen 443 ssl http2;|\1listen 127.0.0.1:$https_port ssl http2;|" \
    -e "/listen \[::\]:/d" \
    -e "s|/etc/letsencrypt/live/auth.example.com/fullchain.pem|$tmp/server.pem|" \
    -e "s|/etc/letsencrypt/live/auth.example.com/privkey.pem|$tmp/server.key|" \
    deploy/nginx.conf >"$tmp/site.conf"
for want in "server $service_addr;" "listen 127.0.0.1:$http_port;" \
    "listen 127.0.0.1:$https_port ssl http2;" "$tmp/server.pem;" "$tmp/server.key;"; do
    grep -qF "$want" "$tmp/site.conf" || fail "deploy/nginx.conf no longer has what became: $want"
done
if grep -qE 'listen +(\[|[0-9]+[ ;])' "$tmp/site.conf"; then
    fail "deploy/nginx.conf listens somewhere this script did not move to 127.0.0.1"
fi
mkdir -p "$tmp/nginx"
user_line=
if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi
cat >"$tmp/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log $tmp/nginx-access.log;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    include $tmp/site.conf;
}
EOF
nginx -e "$tmp/nginx-error.log" -p "$tmp" -c "$tmp/nginx.conf" -t
nginx -e "$tmp/nginx-error.log" -p "$tmp" -c "$tmp/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
base="https://127.0.0.1:$https_port"
for _ in $(seq 100); do
    curl -s -o /dev/null --cacert "$tmp/ca.pem" "$base/health" && break
    kill -0 "$nginx_pid" 2>/dev/null || { cat "$tmp/nginx-error.log"; fail "nginx died"; }
    sleep 0.1
done

# One HTTPS request from source address $1 (any 127.0.0.0/8 address); extra curl arguments
# follow. Sets $status, $headers and $body.
request() {
    local from=$1
    shift
    status=$(curl -sS --cacert "$tmp/ca.pem" --interface "$from" -o "$tmp/body" \
        -D "$tmp/headers" -w '%{http_code}' "$@")
    headers=$(tr -d '\r' <"$tmp/headers")
    body=$(cat "$tmp/body")
}
expect() { # status, what
    [ "$status" = "$1" ] || fail "$2: status $status, expected $1 (body $body)"
}
has_header() { # regex, what
    grep -qiE "$1" <<<"$headers" || fail "$2: no header matching $1 in:
$headers"
}

step "the scenario over HTTPS: AUTH_CA_CERT=ca.pem cargo run --example main -- $base"
AUTH_CA_CERT="$tmp/ca.pem" cargo run --quiet --example main -- "$base"

step "the session cookie is Secure, HttpOnly and SameSite through the proxy"
request 127.0.0.1 "$base/users" -d email=cookie@example.com -d password=pw1
expect 200 "register"
request 127.0.0.1 "$base/sessions" -d email=cookie@example.com -d password=pw1
expect 200 "log in"
has_header '^set-cookie: session_id=[0-9a-f-]{36}; Path=/; HttpOnly; SameSite=Lax; Max-Age=[0-9]+; Secure$' \
    "the login's cookie"
has_header '^strict-transport-security: max-age=' "HSTS"
session=$(sed -n 's/^set-cookie: session_id=\([^;]*\);.*/\1/Ip' <<<"$headers")
request 127.0.0.1 "$base/profile" -b "session_id=$session"
expect 200 "profile with the cookie"
[ "$body" = '{"email":"cookie@example.com"}' ] || fail "profile body $body"
request 127.0.0.1 -X DELETE "$base/sessions" -b "session_id=$session"
expect 302 "log out"
has_header '^set-cookie: session_id=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0; Secure$' \
    "the cleared cookie"
echo "ok"

step "plain HTTP redirects to HTTPS"
status=$(curl -sS -o /dev/null -D "$tmp/headers" -w '%{http_code}' "http://127.0.0.1:$http_port/profile")
headers=$(tr -d '\r' <"$tmp/headers")
body=
expect 301 "plain HTTP"
has_header '^location: https://127\.0\.0\.1(:443)?/profile$' "the redirect"
echo "ok"

step "the throttle counts the address nginx saw, whatever X-Forwarded-For the client sends"
request 127.0.0.1 "$base/users" -d email=throttle@example.com -d password=right
expect 200 "register"
for i in 1 2 3; do
    # A different forged hop each time: were it believed, each would start a fresh count.
    request 127.0.0.2 "$base/sessions" -H "X-Forwarded-For: 203.0.113.$i" \
        -d email=throttle@example.com -d password=wrong
    expect 401 "wrong password $i from 127.0.0.2"
done
request 127.0.0.2 "$base/sessions" -H "X-Forwarded-For: 198.51.100.1" \
    -d email=throttle@example.com -d password=right
expect 429 "the right password from 127.0.0.2 after 3 failures"
has_header '^retry-after: [1-9][0-9]*$' "the 429"
# Another client behind the same proxy is not locked out (without --trust-proxy every client
# would be nginx's 127.0.0.1, and share one count).
request 127.0.0.3 "$base/sessions" -d email=throttle@example.com -d password=right
expect 200 "the right password from 127.0.0.3"
# The log names the address nginx saw, never a forged one: what fail2ban will ban.
failed=$(grep -cF '"event":"login_failed","addr":"127.0.0.2"}' "$tmp/service.log" || true)
[ "$failed" = 3 ] || fail "the log has $failed login_failed events from 127.0.0.2, not 3"
if grep -q '"addr":"\(203\.0\.113\|198\.51\.100\)\.' "$tmp/service.log"; then
    fail "a forged X-Forwarded-For address reached the log"
fi
grep -qF '"event":"login_throttled","addr":"127.0.0.2"}' "$tmp/service.log" \
    || fail "the log has no login_throttled event from 127.0.0.2"
echo "ok"

step "metrics stay off the proxy; bodies are bounded with JSON answers"
request 127.0.0.1 "$base/metrics"
expect 404 "/metrics through nginx"
[ "$body" = '{"message":"not found"}' ] || fail "/metrics body $body"
status=$(curl -sS -o "$tmp/metrics" -w '%{http_code}' "http://$service_addr/metrics")
[ "$status" = 200 ] || fail "/metrics on the service itself: $status"
grep -q '^auth_logins_total{outcome="throttled"} 1$' "$tmp/metrics" \
    || fail "the service counted no throttled login"
head -c 100000 /dev/zero | tr '\0' a >"$tmp/100k"
request 127.0.0.1 "$base/users" --data-binary "@$tmp/100k"
expect 413 "a 100 KB body (the service's limit)"
grep -q '^{"message":"request body is larger than 65536 bytes"}$' <<<"$body" || fail "413 body $body"
head -c 300000 /dev/zero | tr '\0' a >"$tmp/300k"
request 127.0.0.1 "$base/users" --data-binary "@$tmp/300k"
expect 413 "a 300 KB body (nginx's limit)"
[ "$body" = '{"message":"request body is too large"}' ] || fail "nginx's 413 body $body"
echo "ok"

step "auth-service backup while registrations pour in through nginx (README, Backups)"
# Four clients register through nginx, each from an address of its own and at most 25 times
# (within any per-address limit on registrations), writing down each one acknowledged. The
# backup is taken once 20 are in, while they carry on.
register_load() { # client number
    local n email status
    for n in $(seq 25); do
        [ -e "$tmp/stop-load" ] && return
        email="load-$1-$n@example.com"
        status=$(curl -sS --cacert "$tmp/ca.pem" --interface "127.0.1.$1" -o /dev/null \
            -w '%{http_code}' "$base/users" -d "email=$email" -d password=pw) || continue
        if [ "$status" = 200 ]; then echo "$email" >>"$tmp/acked-$1"; fi
    done
}
acked() { cat "$tmp"/acked-* 2>/dev/null | sort; }
load_pids=()
for client in 1 2 3 4; do
    register_load "$client" &
    load_pids+=($!)
done
for _ in $(seq 200); do
    [ "$(acked | wc -l)" -ge 20 ] && break
    sleep 0.05
done
acked >"$tmp/acked-before"
[ "$(wc -l <"$tmp/acked-before")" -ge 20 ] || fail "the registrations did not get going"
target/release/auth-service backup "$tmp/backup.db"
acked >"$tmp/acked-at-end"
touch "$tmp/stop-load"
wait "${load_pids[@]}"
echo "$(wc -l <"$tmp/acked-before") registrations acknowledged before the backup," \
    "$(wc -l <"$tmp/acked-at-end") by its end, $(acked | wc -l) in all"
[ "$(acked | wc -l)" -gt "$(wc -l <"$tmp/acked-before")" ] \
    || fail "no registration was acknowledged once the backup had started"
if target/release/auth-service backup "$tmp/backup.db" 2>"$tmp/refused"; then
    fail "a second backup overwrote the first"
fi
grep -q "already exists; not overwritten" "$tmp/refused" || fail "$(cat "$tmp/refused")"

step "auth-service check on the copy: intact, and every acknowledged user in it"
target/release/auth-service check "$tmp/backup.db" | tee "$tmp/check"
grep -qx "integrity: ok" "$tmp/check" || fail "the backup is not intact"
target/release/auth-service users list --db "$tmp/backup.db" | cut -f 2 | sort >"$tmp/in-backup"
missing_users=$(comm -23 "$tmp/acked-before" "$tmp/in-backup")
[ -z "$missing_users" ] || fail "acknowledged before the backup, missing from it: $missing_users"
request 127.0.0.1 "$base/users" -d email=after-backup@example.com -d password=pw2
expect 200 "register after the backup"
echo "ok"

step "with the service gone, nginx answers a JSON 503"
kill "$service_pid"
wait "$service_pid" 2>/dev/null || true
service_pid=
request 127.0.0.1 "$base/health"
expect 503 "health with the service stopped"
has_header '^retry-after: 5$' "the 503"
[ "$body" = '{"message":"service unavailable, try again"}' ] || fail "503 body $body"
echo "ok"

step "restore the backup (README, Backups) and serve it again"
cp "$tmp/backup.db" "$tmp/auth.db"
rm -f "$tmp/auth.db-wal" "$tmp/auth.db-shm"
target/release/auth-service check | tee "$tmp/check"
grep -qx "integrity: ok" "$tmp/check" || fail "the restored database is not intact"
# On the same port, so nginx finds it again.
target/release/auth-service --bind "$service_addr" --trust-proxy --secure-cookies \
    --bcrypt-cost 4 2>"$tmp/service2.log" &
service_pid=$!
for _ in $(seq 100); do
    grep -q "listening on" "$tmp/service2.log" && break
    kill -0 "$service_pid" 2>/dev/null || { cat "$tmp/service2.log"; fail "the restored service died"; }
    sleep 0.1
done
request 127.0.0.1 "$base/sessions" -d email=cookie@example.com -d password=pw1
expect 200 "a user from before the backup logs in"
request 127.0.0.1 "$base/sessions" -d email=after-backup@example.com -d password=pw2
expect 401 "a user registered after the backup is gone"
request 127.0.0.1 "$base/sessions" -d "email=$(tail -n 1 "$tmp/acked-before")" -d password=pw
expect 200 "a user acknowledged under load before the backup logs in"
echo "ok"

step "every line the service wrote with --log-format json is JSON"
if command -v python3 >/dev/null; then
    python3 -c '
import json, sys
for n, line in enumerate(open(sys.argv[1]), 1):
    if not isinstance(json.loads(line), dict):
        sys.exit("line %d is not a JSON object: %s" % (n, line))
' "$tmp/service.log" || fail "the JSON log has a line that is not JSON"
    echo "ok: $(wc -l <"$tmp/service.log") lines"
else
    echo "python3 is not installed: skipped"
fi

echo
echo "nginx: all checks passed"
