#!/usr/bin/env bash
# deploy/fail2ban, checked by Debian's fail2ban: its jail and filter load in fail2ban's own
# configuration test, and tests/fail2ban.rs runs fail2ban-regex with the filter over a log
# the service wrote with --log-format json (its failed logins from two addresses, found
# exactly, in a file and in the journal's form). AUTH_TEST_FAIL2BAN makes that test fail,
# rather than skip, when fail2ban-regex is missing.
#
# Nothing is started: fail2ban's service stays off, and no firewall rule is made.
# Called from .ci/run; runs on its own too (bash .ci/fail2ban.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

source .ci/lib.sh

if ! command -v fail2ban-regex >/dev/null || ! command -v fail2ban-client >/dev/null; then
    apt_install fail2ban
fi
fail2ban-client --version

tmp=$(mktemp -d /tmp/auth-ci-fail2ban.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

step "fail2ban-client -t: Debian's configuration with deploy/fail2ban's jail and filter"
cp -r /etc/fail2ban "$tmp/fail2ban"
# This jail alone: Debian's own (sshd) wants a log this machine need not have.
rm -f "$tmp"/fail2ban/jail.d/*
install -m 644 deploy/fail2ban/filter.d/auth-service.conf "$tmp/fail2ban/filter.d/"
install -m 644 deploy/fail2ban/jail.d/auth-service.conf "$tmp/fail2ban/jail.d/"
fail2ban-client -c "$tmp/fail2ban" -t
fail2ban-client -c "$tmp/fail2ban" -d >"$tmp/dump" 2>&1
for want in "['add', 'auth-service', 'systemd']" \
    "['set', 'auth-service', 'addjournalmatch', '_SYSTEMD_UNIT=auth-service.service']" \
    "['set', 'auth-service', 'maxretry', 10]" "['set', 'auth-service', 'bantime', '1h']"; do
    grep -qF "$want" "$tmp/dump" || fail "the jail as fail2ban reads it lacks $want"
done
echo "the jail and filter load"

step "AUTH_TEST_FAIL2BAN=1 cargo test --test fail2ban (fail2ban-regex on the service's log)"
AUTH_TEST_FAIL2BAN=1 cargo test --test fail2ban
