#!/usr/bin/env bash
# Installs, from Debian's packages, the programs the test suite uses as real peers:
# PostgreSQL (second database), openssl (independent CMS/PKCS#12 checks), swaks (SMTP client),
# Chromium (web end-to-end tests). Does nothing when they are already there.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v openssl >/dev/null || need+=(openssl)
command -v swaks >/dev/null || need+=(swaks)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo -n); else
    echo "error: missing ${need[*]} and no way to install them (run as root or with sudo)" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
