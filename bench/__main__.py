"""Run the benchmark suite: ``python -m bench [WORKLOAD ...] [--runs N]``.

Prints a table, then one JSON line per figure. Uses PGQ_DATABASE_URL's server (default
localhost) and a scratch database ``pgq_bench`` that it drops and recreates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import psycopg

from bench.workloads import WORKLOADS, Figure, fresh_database


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("workloads", nargs="*", choices=[*WORKLOADS, []], default=[])
    parser.add_argument("--runs", type=int, default=None, help="repetitions (median reported)")
    opts = parser.parse_args()
    admin = os.environ.get("PGQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = fresh_database(admin, "pgq_bench")
    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"PostgreSQL {server}", file=sys.stderr)
    figures: list[Figure] = []
    for name in opts.workloads or list(WORKLOADS):
        kwargs = {"runs": opts.runs} if opts.runs else {}
        figures.append(WORKLOADS[name](url, **kwargs))
    print(f"{'workload':<16} {'pgq':>12} {'baseline':>12} {'ratio':>6}  unit / baseline")
    for f in figures:
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        base = f"{f.baseline:,.0f}" if f.baseline is not None else "-"
        print(f"{f.workload:<16} {f.pgq:>12,.0f} {base:>12} {ratio:>6}  {f.unit} / {f.baseline_name}")
    for f in figures:
        print(json.dumps({"workload": f.workload, "unit": f.unit, "pgq": round(f.pgq, 1),
                          "baseline": round(f.baseline, 1) if f.baseline else None,
                          "baseline_name": f.baseline_name,
                          "ratio": round(f.ratio, 3) if f.ratio else None}))


if __name__ == "__main__":
    main()
