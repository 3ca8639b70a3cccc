#!/usr/bin/env bash
# Runs the whole suite twice: on SQLite (the default), then on a PostgreSQL server started
# here on loopback in a temporary folder and stopped at the end.
set -uo pipefail
python=${1:-.venv/bin/python}
here=$(cd "$(dirname "$0")" && pwd)
pgdir=$(mktemp -d /tmp/mss-pg.XXXXXX)
cleanup() { bash "$here/pg.sh" stop "$pgdir" >/dev/null 2>&1; rm -rf "$pgdir"; }
trap cleanup EXIT

if ! MSS_TEST_PG_URL=$(bash "$here/pg.sh" start "$pgdir"); then
    echo "error: could not start PostgreSQL for the tests" >&2
    exit 1
fi
export MSS_TEST_PG_URL

status=0
echo "== test suite on SQLite"
"$python" -m pytest -q "${@:2}" || status=$?
echo "== test suite on PostgreSQL"
MSS_TEST_BACKEND=postgresql "$python" -m pytest -q -m "not sqlite_only" "${@:2}" || status=$((status ? status : $?))
exit $status
