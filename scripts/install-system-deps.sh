#!/usr/bin/env bash
# Installs the system packages the tests need, when they are missing:
#   mariadb-server  (tests start a private mariadbd; see docs/testing.md)
#   chromium        (Playwright end-to-end tests of the 3-D Secure challenge page)
# Idempotent and quiet. Exit 0 when everything is present (or was installed);
# exit 1 when something is missing and we cannot install it (not root, or no apt-get).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

missing=()
have mariadbd && have mariadb-install-db || missing+=(mariadb-server)
have chromium || have chromium-browser || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system-deps: nothing to do (mariadb-server, chromium present)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: missing ${missing[*]}; install them, e.g.:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    echo "(or set TEST_DATABASE_URL to an existing MySQL/MariaDB server; see docs/testing.md)" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "install-system-deps: installed ${missing[*]}"
