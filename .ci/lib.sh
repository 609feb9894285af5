# What the scripts under .ci/ share; each sources it after `cd` to the repository's root.

step() { printf '\n== %s\n' "$*"; }

fail() {
    echo "FAILED: $*" >&2
    exit 1
}

# Installs Debian packages without starting the services they bring (policy-rc.d answering
# 101, "do not start"): CI starts its own nginx, PostgreSQL cluster or nothing at all, on
# loopback ports of its choosing, and Debian's would take port 80 or 5432.
apt_install() {
    step "apt-get install $*"
    local made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
}
