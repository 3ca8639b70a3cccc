#!/usr/bin/env bash
# Installs, from Debian's packages, the programs the test suite uses as real peers, and checks
# each one by what the tests need of it, not by the command being on the PATH: swaks must
# speak STARTTLS (Net::SSLeay), openssl must have `cms`, gpgsm must reach its agent in a
# throw-away home, NSS's cmsutil must encrypt and decrypt, Chromium must start headless ...
# A capability that is missing after the install is an error: the suite would fail later
# with a less clear message.
#
# Each line of CAPABILITIES is "packages|check": the packages that bring the capability and a
# shell command that succeeds only when it is there. Add a line for every tool a test uses.
set -euo pipefail

CAPABILITIES=(
    "postgresql|ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1) --version"
    "openssl|openssl cms -help 2>&1 | grep -q -- '-decrypt' && openssl pkcs12 -help 2>&1 | grep -q -- '-export'"
    "swaks libnet-ssleay-perl libio-socket-ssl-perl|swaks --support 2>&1 | grep -q '^=== \(START\)\?TLS supported'"
    "gpgsm gpg-agent|d=\$(mktemp -d /tmp/gsXXXXXX) && printf 'allow-loopback-pinentry\\n' > \$d/gpg-agent.conf && GNUPGHOME=\$d gpgsm --batch --pinentry-mode loopback --list-keys && GNUPGHOME=\$d gpg-connect-agent 'GETINFO version' /bye | grep -q '^D 2'; s=\$?; GNUPGHOME=\$d gpgconf --kill all; rm -rf \$d; exit \$s"
    "libnss3-tools|d=\$(mktemp -d) && certutil -N -d sql:\$d --empty-password && head -c 64 /dev/urandom > \$d/noise && certutil -S -d sql:\$d -n t -s CN=t -x -t ,C, -k rsa -g 2048 -z \$d/noise && echo capable | cmsutil -E -r t -d sql:\$d | cmsutil -D -d sql:\$d | grep -q capable && pk12util 2>&1 | grep -q -- '-i importfile'; s=\$?; rm -rf \$d; exit \$s"
    "isync|mbsync --version 2>&1 | grep -q '^isync 1' && mbsync --help 2>&1 | grep -q -- '--pull'"
    "offlineimap3|offlineimap --version 2>&1 | grep -Eq '^[0-9]+\.[0-9]+'"
    "postfix|/usr/sbin/postconf -d mail_version smtpd_tls_req_ccert smtp_tls_cert_file >/dev/null && test -x \$(/usr/sbin/postconf -dh daemon_directory)/smtpd && test -x \$(/usr/sbin/postconf -dh daemon_directory)/master"
    "nodejs npm|npm --version && node -e 'process.exit(0)'"
    "chromium fonts-dejavu-core fonts-dejavu-extra fontconfig|fc-list : family | grep -q 'DejaVu Sans Condensed' && chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update --no-first-run --user-data-dir=\$(mktemp -d) --dump-dom 'data:text/html,<p>ok</p>' 2>/dev/null | grep -q '<p>ok</p>'"
)

check() { bash -c "$1" >/dev/null 2>&1; }

need=()
for line in "${CAPABILITIES[@]}"; do
    packages=${line%%|*} probe=${line#*|}
    check "$probe" || need+=($packages)
done
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing system packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null; then sudo=(sudo -n); else
    echo "error: missing ${need[*]} and no way to install them (run as root or with sudo)" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if [[ " ${need[*]} " == *" postfix "* ]]; then
    # The tests run private Postfix instances on loopback high ports: the package must not
    # configure a system mail server (debconf "No configuration" writes no main.cf).
    echo "postfix postfix/main_mailer_type select No configuration" | "${sudo[@]}" debconf-set-selections
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if [[ " ${need[*]} " == *" postfix "* ]]; then
    # Never leave a system Postfix running or starting at boot (it would listen on port 25).
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        "${sudo[@]}" systemctl disable --now postfix >/dev/null 2>&1 || true
    fi
    if [ -f /etc/postfix/main.cf ] && "${sudo[@]}" /usr/sbin/postfix status >/dev/null 2>&1; then
        "${sudo[@]}" /usr/sbin/postfix stop >/dev/null 2>&1 || true
    fi
    if command -v ss >/dev/null && ss -ltnH 2>/dev/null | awk '{print $4}' | grep -Eq '(^|:)25$'; then
        echo "error: something still listens on port 25 after installing postfix; stop it" >&2
        exit 1
    fi
fi

missing=()
for line in "${CAPABILITIES[@]}"; do
    packages=${line%%|*} probe=${line#*|}
    check "$probe" || missing+=("$packages")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "error: installed, but still not usable by the tests: ${missing[*]}" >&2
    exit 1
fi
