"""Benchmark of the directory: import of a national-size extract, re-import, and search.

    python bench/bench_directory.py                      # SQLite, 535,000 rows
    python bench/bench_directory.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

Steps, each import in its own process so that its peak RSS is its own:

1. generate ``bench/out/extract_<rows>.txt`` with ``gen_extract.py`` (reused when present);
2. import it into a fresh database (SQLite file under ``bench/out/``, or a new database
   created on the PostgreSQL server of ``--database-url`` and dropped afterwards);
3. import it again (every line unchanged: the idempotent pass);
4. import a copy where one line in 20 changed (a profession label), as a monthly extract;
5. run ``--searches`` representative searches (names, names as typed, name and city,
   RPPS, addresses, organisations, specialities, a few broad ones) after a warm-up, and
   print p50/p95/p99 overall and per kind of query; then the same searches asking for the
   count of every match too, as the web pages, the API and the command line do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The tree this script is in, unless PYTHONPATH names another (to compare two trees).
sys.path.insert(len(sys.path) if os.environ.get("PYTHONPATH") else 0, str(ROOT))
sys.path.insert(0, str(HERE))

import gen_extract
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from unidecode import unidecode

from directory.extract import FIELDS, SEPARATOR
from mss.db import make_engine, migrate
from mss.settings import Settings

OUT = HERE / "out"
_COLUMN = {name: index for index, name in enumerate(FIELDS)}

# Share of each kind of query in the mix (sums to 1): what people type in a directory.
QUERY_MIX = (
    ("last name", 0.28),
    ("last + first name", 0.15),
    ("as typed (prefixes)", 0.15),
    ("name + city", 0.10),
    ("RPPS", 0.08),
    ("address", 0.08),
    ("organisation + city", 0.06),
    ("speciality + city", 0.06),
    ("broad (city or first name alone)", 0.04),
)


def _engine(url: str):
    return make_engine(Settings.from_env({"MSS_DATABASE_URL": url, "MSS_DATA_DIR": str(OUT)}))


# -- import, in a child process -----------------------------------------------------------


def _anonymous_kib() -> int:
    """The process's anonymous resident memory now (heap, stacks), in KiB (Linux)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("RssAnon:"))


def child_import(url: str, extract: Path) -> None:
    """Import once and print one JSON line: seconds, peak RSS and peak anonymous memory
    (MiB), counts. The RSS counts the pages of the database file SQLite maps (``PRAGMA
    mmap_size``), which the kernel can drop at any time; the anonymous part is what the
    import allocated (sampled every 20 ms)."""
    from directory.importer import import_extract

    engine = _engine(url)
    peak_anon = _anonymous_kib()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not stop.wait(0.02):
            peak_anon = max(peak_anon, _anonymous_kib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    summary = import_extract(engine, extract, actor="bench")
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    engine.dispose()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result = {"seconds": seconds, "peak_rss_mib": peak_mib, "peak_anon_mib": peak_anon / 1024, **summary.counts()}
    print(json.dumps(result))


def run_import(url: str, extract: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, __file__, "_import", "--database-url", url, "--extract", str(extract)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def changed_copy(extract: Path, every: int = 20) -> Path:
    """A copy of ``extract`` where one data line in ``every`` has a changed profession label."""
    out = extract.with_name(f"{extract.stem}_changed.txt")
    if out.exists() and out.stat().st_mtime >= extract.stat().st_mtime:
        return out
    label = _COLUMN["profession_label"]
    with open(extract, encoding="utf-8") as source, open(out, "w", encoding="utf-8", newline="\n") as target:
        target.write(next(source))
        for number, line in enumerate(source, start=1):
            if number % every == 0:
                values = line.rstrip("\n").split(SEPARATOR)
                values[label] += " (exercice mixte)"
                line = SEPARATOR.join(values) + "\n"
            target.write(line)
    return out


# -- searches -----------------------------------------------------------------------------


def _as_typed(value: str, rng: random.Random) -> str:
    """How a person types a value: lower case, often without accents."""
    value = value.lower()
    return unidecode(value) if rng.random() < 0.7 else value


def build_queries(extract: Path, count: int, seed: int = 7) -> list[tuple[str, str]]:
    """``count`` (kind, query) pairs drawn from the extract's lines, in the QUERY_MIX shares."""
    rng = random.Random(seed)
    people, organisations = [], []
    with open(extract, encoding="utf-8") as handle:
        next(handle)
        for number, line in enumerate(handle):
            # One line in 50 is plenty to draw from and keeps the memory small.
            if number % 50:
                continue
            values = line.rstrip("\n").split(SEPARATOR)
            (people if values[0] == "PER" else organisations).append(values)

    def col(values: list[str], name: str) -> str:
        return values[_COLUMN[name]]

    def city(values: list[str]) -> str:
        return col(values, "addr_l6").split(" ", 1)[1].replace(" CEDEX", "")

    kinds = [kind for kind, _ in QUERY_MIX]
    weights = [share for _, share in QUERY_MIX]
    queries = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        p = rng.choice(people)
        if kind == "last name":
            q = _as_typed(col(p, "last_name"), rng)
        elif kind == "last + first name":
            q = _as_typed(f"{col(p, 'last_name')} {col(p, 'first_name')}", rng)
        elif kind == "as typed (prefixes)":
            last = unidecode(col(p, "last_name")).lower()
            q = last[: rng.randint(3, 5)]
            if rng.random() < 0.5:
                q += " " + unidecode(rng.choice((col(p, "first_name"), city(p)))).lower()[: rng.randint(2, 4)]
        elif kind == "name + city":
            q = _as_typed(f"{col(p, 'last_name')} {city(p)}", rng)
        elif kind == "RPPS":
            q = col(p, "rpps")
        elif kind == "address":
            q = col(p, "address")
        elif kind == "organisation + city":
            o = rng.choice(organisations)
            q = _as_typed(f"{col(o, 'org_trade_name') or col(o, 'org_name')} {city(o)}", rng)
        elif kind == "speciality + city":
            label = col(p, "skill_label") or col(p, "profession_label")
            q = _as_typed(f"{label.split()[0]} {city(p)}", rng)
        else:
            q = _as_typed(rng.choice((city(p), col(p, "first_name"))), rng)
        queries.append((kind, q))
    return queries


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_searches(url: str, queries: list[tuple[str, str]], *, with_total: bool = False) -> dict[str, dict[str, float]]:
    """Time each search (first page of 20; with ``with_total`` also the count of every match,
    as the web pages, the API and the command line ask); return percentiles overall and per
    kind (ms)."""
    from sqlmodel import Session

    from directory.search import search

    engine = _engine(url)
    timings: dict[str, list[float]] = {}
    with Session(engine) as session:
        for _, q in queries[:50]:  # warm-up: caches, prepared statements
            search(session, q, with_total=with_total)
        for kind, q in queries:
            start = time.perf_counter()
            search(session, q, with_total=with_total)
            elapsed = (time.perf_counter() - start) * 1000
            timings.setdefault(kind, []).append(elapsed)
            timings.setdefault("all", []).append(elapsed)
    engine.dispose()
    return {
        kind: {
            "n": len(values),
            "p50": statistics.median(values),
            "p95": _percentile(values, 0.95),
            "p99": _percentile(values, 0.99),
            "max": max(values),
        }
        for kind, values in timings.items()
    }


COUNTED = "first page of 20 and the count of every match, as the web, the API and the CLI ask"


def print_searches(searches: int, stats: dict[str, dict[str, float]], what: str = "first page of 20") -> None:
    print(f"search, {searches} queries, {what} (ms):")
    print(f"  {'kind':34} {'n':>5} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    for kind in ["all", *(k for k, _ in QUERY_MIX)]:
        if kind in stats:
            s = stats[kind]
            print(f"  {kind:34} {s['n']:5d} {s['p50']:7.1f} {s['p95']:7.1f} {s['p99']:7.1f} {s['max']:7.1f}")


# -- databases ----------------------------------------------------------------------------


def fresh_database(server_url: str | None) -> tuple[str, object]:
    """A URL to an empty database, and what ``drop_database`` needs to remove it."""
    if server_url is None:
        path = OUT / "bench_directory.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}", path
    admin_url = make_url(server_url).set(drivername="postgresql+psycopg")
    name = "mss_bench_" + secrets.token_hex(4)
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False), (admin_url, name)


def drop_database(handle: object) -> None:
    if isinstance(handle, Path):
        return  # the SQLite file stays under bench/out/ for inspection
    admin_url, name = handle
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_import"]:
        child = argparse.ArgumentParser()
        child.add_argument("--database-url", required=True)
        child.add_argument("--extract", type=Path, required=True)
        args = child.parse_args(argv[1:])
        child_import(args.database_url, args.extract)
        return 0

    parser = argparse.ArgumentParser(description="Directory import and search benchmark.")
    parser.add_argument("--rows", type=int, default=535_000, help="rows of the synthetic extract (default 535000)")
    parser.add_argument("--extract", type=Path, help="an existing extract to use instead of a generated one")
    parser.add_argument("--database-url", help="a PostgreSQL server URL (a fresh database is created on it)")
    parser.add_argument("--searches", type=int, default=1000, help="searches to time (default 1000)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--searches-on",
        metavar="URL",
        help="only run the searches, on this database where the extract is already imported "
        "(to compare two trees on one database: run each with PYTHONPATH set to it, in turn)",
    )
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    extract = args.extract or OUT / f"extract_{args.rows}.txt"
    if not extract.exists():
        print(f"generating {extract} ({args.rows} rows) ...", flush=True)
        gen_extract.generate(args.rows, extract)
    if args.searches_on:
        queries = build_queries(extract, args.searches)
        stats = run_searches(args.searches_on, queries)
        counted = run_searches(args.searches_on, queries, with_total=True)
        print_searches(args.searches, stats)
        print_searches(args.searches, counted, COUNTED)
        if args.json:
            args.json.write_text(json.dumps({"search": stats, "search_with_total": counted}, indent=2))
        return 0

    url, handle = fresh_database(args.database_url)
    try:
        engine = _engine(url)
        migrate(engine)
        backend = engine.dialect.name
        server = engine.dialect.server_version_info
        engine.dispose()
        print(f"backend {backend} {'.'.join(map(str, server or ()))}, extract {extract.name}", flush=True)
        first = run_import(url, extract)
        print(
            f"import      {first['seconds']:6.1f} s  peak RSS {first['peak_rss_mib']:5.0f} MiB "
            f"(anon {first['peak_anon_mib']:4.0f})  "
            f"added {first['added']} rejected {first['rejected']}",
            flush=True,
        )
        second = run_import(url, extract)
        print(
            f"re-import   {second['seconds']:6.1f} s  peak RSS {second['peak_rss_mib']:5.0f} MiB "
            f"(anon {second['peak_anon_mib']:4.0f})  "
            f"unchanged {second['unchanged']} added {second['added']} updated {second['updated']}",
            flush=True,
        )
        third = run_import(url, changed_copy(extract))
        print(
            f"update      {third['seconds']:6.1f} s  peak RSS {third['peak_rss_mib']:5.0f} MiB "
            f"(anon {third['peak_anon_mib']:4.0f})  "
            f"updated {third['updated']} unchanged {third['unchanged']}",
            flush=True,
        )
        queries = build_queries(extract, args.searches)
        stats = run_searches(url, queries)
        counted = run_searches(url, queries, with_total=True)
    finally:
        drop_database(handle)

    print_searches(args.searches, stats)
    print_searches(args.searches, counted, COUNTED)
    if args.json:
        results = {
            "backend": backend,
            "import": first,
            "reimport": second,
            "update": third,
            "search": stats,
            "search_with_total": counted,
        }
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
