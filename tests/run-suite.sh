#!/usr/bin/env bash
# Runs the whole suite twice: on SQLite (the default) and on a PostgreSQL server started here
# on loopback in a temporary folder and stopped at the end.
#
# The suite is CPU-bound in one process, so with two cores or more the two passes run side by
# side, each in its own temporary folder: the SQLite pass prints as it goes, the PostgreSQL
# pass's output follows once both have ended (its log, named at the start, can be followed
# meanwhile). With one core they run one after the other.
set -uo pipefail
python=${1:-.venv/bin/python}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/mss-suite.XXXXXX)
pgdir=$(mktemp -d /tmp/mss-pg.XXXXXX)
pg_pass=""
cleanup() {
    [ -n "$pg_pass" ] && kill -INT "$pg_pass" 2>/dev/null && wait "$pg_pass" 2>/dev/null
    bash "$here/pg.sh" stop "$pgdir" >/dev/null 2>&1
    rm -rf "$pgdir" "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! MSS_TEST_PG_URL=$(bash "$here/pg.sh" start "$pgdir"); then
    echo "error: could not start PostgreSQL for the tests" >&2
    exit 1
fi
export MSS_TEST_PG_URL

sqlite_pass=("$python" -m pytest -q --basetemp "$work/t-sqlite" "${@:2}")
postgresql_pass=(env MSS_TEST_BACKEND=postgresql "$python" -m pytest -q -m "not sqlite_only" --basetemp "$work/t-pg" "${@:2}")

status=0
if [ "$(nproc)" -ge 2 ]; then
    echo "== test suite on SQLite and on PostgreSQL, side by side"
    # In the background, pytest itself ($!, through exec, env exec-ing it in turn) with
    # Ctrl-C back at its default (bash ignores it in background commands): an interrupted
    # run ends both passes the same way, each with its teardown.
    (
        trap - INT
        exec "${postgresql_pass[@]}"
    ) >"$work/postgresql.log" 2>&1 &
    pg_pass=$!
    echo "   (the PostgreSQL pass writes $work/postgresql.log as it goes: tail -f to follow it)"
    echo "== test suite on SQLite"
    "${sqlite_pass[@]}" || status=$?
    kill -0 "$pg_pass" 2>/dev/null && echo "== waiting for the PostgreSQL pass to end"
    wait "$pg_pass"
    pg_status=$?
    pg_pass=""
    echo "== test suite on PostgreSQL"
    cat "$work/postgresql.log"
    status=$((status ? status : pg_status))
else
    echo "== test suite on SQLite"
    "${sqlite_pass[@]}" || status=$?
    echo "== test suite on PostgreSQL"
    "${postgresql_pass[@]}" || status=$((status ? status : $?))
fi
exit $status
