"""Run the benchmark suite: ``python -m bench [WORKLOAD ...] [--runs N]``.

Prints a table, then one JSON line per figure. Uses PGQ_DATABASE_URL's server (default
localhost) and scratch databases ``pgq_bench`` (throughput), ``pgq_bench_pickup``
(pickup latency), ``pgq_bench_prune`` (claim latency while pruning), ``pgq_bench_aged``
with ``pgq_bench_aged_empty`` (aged table), ``pgq_bench_snapshot`` (drain under an open
snapshot), ``pgq_bench_memory`` (worker memory), ``pgq_bench_cmp`` (the comparison's
drain against pgbench's ceiling), ``pgq_bench_recovery`` (crash recovery) and
``pgq_bench_stats`` (queue stats on 10 million rows) and ``pgq_bench_retry`` (claim latency
during a bulk retry of 100,000 dead letters) that it drops and recreates; and
``pgq_bench_web`` (``PGQ_BENCH_WEB_DB``: the dashboard's reads on 10 million rows), which it
keeps between runs because seeding it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import psycopg

from bench.aged import AGED, AgedResult
from bench.aged import DATABASE as AGED_DATABASE
from bench.bulk_retry import BULK_RETRY
from bench.bulk_retry import DATABASE as BULK_RETRY_DATABASE
from bench.bulk_retry_report import BulkRetryResult
from bench.comparison import COMPARISON, ComparisonResult, comparison
from bench.comparison import DATABASE as COMPARISON_DATABASE
from bench.memory import DATABASE as MEMORY_DATABASE
from bench.memory import MEMORY, MemoryResult
from bench.pickup import DATABASE as PICKUP_DATABASE
from bench.pickup import PICKUP, Latency
from bench.prune import DATABASE as PRUNE_DATABASE
from bench.prune import PRUNE, PruneResult
from bench.recovery import DATABASE as RECOVERY_DATABASE
from bench.recovery import RECOVERY, RecoveryResult
from bench.snapshot import DATABASE as SNAPSHOT_DATABASE
from bench.snapshot import SNAPSHOT, SnapshotResult
from bench.stats import DATABASE as STATS_DATABASE
from bench.stats import STATS, StatsResult
from bench.web_http import WEB_HTTP
from bench.web_reads import WEB_READS as _DIRECT_READS
from bench.web_reads import WebReadsResult, ensure_database
from bench.workloads import WORKLOADS, Figure, fresh_database

WEB_READS = {**_DIRECT_READS, **WEB_HTTP}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("workloads", nargs="*", default=[],
                        choices=[*WORKLOADS, *PICKUP, *PRUNE, *AGED, *SNAPSHOT, *MEMORY,
                                 *COMPARISON, *RECOVERY, *STATS, *BULK_RETRY, *WEB_READS, []])
    parser.add_argument("--runs", type=int, default=None,
                        help="repetitions (throughput, aged drain: median reported; pickup, prune, "
                        "aged claims: samples pooled; memory: each run reported)")
    opts = parser.parse_args()
    chosen = opts.workloads or [*WORKLOADS, *PICKUP, *PRUNE, *AGED, *SNAPSHOT, *MEMORY,
                                *COMPARISON, *RECOVERY, *STATS, *BULK_RETRY, *WEB_READS]
    kwargs = {"runs": opts.runs} if opts.runs else {}
    admin = os.environ.get("PGQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    figures: list[Figure] = []
    latencies: list[Latency] = []
    pruned: list[PruneResult] = []
    if any(name in WORKLOADS for name in chosen):
        url = fresh_database(admin, "pgq_bench")
        _describe(url)
        figures = [WORKLOADS[name](url, **kwargs) for name in chosen if name in WORKLOADS]
    if any(name in PICKUP for name in chosen):
        url = fresh_database(admin, PICKUP_DATABASE)
        if not figures:
            _describe(url)
        latencies = [PICKUP[name](url, **kwargs) for name in chosen if name in PICKUP]
    if any(name in PRUNE for name in chosen):
        url = fresh_database(admin, PRUNE_DATABASE)
        if not figures and not latencies:
            _describe(url)
        pruned = [PRUNE[name](url, **kwargs) for name in chosen if name in PRUNE]
    reports: list[AgedResult | SnapshotResult | MemoryResult | ComparisonResult
                  | RecoveryResult | StatsResult | BulkRetryResult | WebReadsResult] = []
    for group, database in ((AGED, AGED_DATABASE), (SNAPSHOT, SNAPSHOT_DATABASE),
                            (MEMORY, MEMORY_DATABASE),
                            (RECOVERY, RECOVERY_DATABASE), (STATS, STATS_DATABASE),
                            (BULK_RETRY, BULK_RETRY_DATABASE)):
        if any(name in group for name in chosen):
            url = fresh_database(admin, database)
            if not figures and not latencies and not pruned and not reports:
                _describe(url)
            reports += [group[name](url, **kwargs) for name in chosen if name in group]
    reports += _web_reads(admin, chosen, kwargs,
                          describe=not (figures or latencies or pruned or reports))
    reports += _compare(admin, chosen, kwargs,
                        describe=not (figures or latencies or pruned or reports))
    if figures:
        print(f"{'workload':<16} {'pgq':>12} {'baseline':>12} {'ratio':>6}  unit / baseline")
    for f in figures:
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "-"
        base = f"{f.baseline:,.0f}" if f.baseline is not None else "-"
        print(f"{f.workload:<16} {f.pgq:>12,.0f} {base:>12} {ratio:>6}  {f.unit} / {f.baseline_name}")
    if latencies:
        print(f"{'workload':<20} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  ms; jobs at rate, CPU busy")
    for lat in latencies:
        s = lat.summary()
        busy = ", ".join(f"{b:.0%}" for b in lat.cpu_busy)
        print(f"{lat.workload:<20} {s['p50']:>8.2f} {s['p95']:>8.2f} {s['p99']:>8.2f} "
              f"{s['max']:>8.2f}  {len(lat.samples)} at {lat.rate:g}/s, {busy}")
        for phase, values in lat.phases.items():
            p = lat.summary(values)
            print(f"  {phase:<18} {p['p50']:>8.2f} {p['p95']:>8.2f} {p['p99']:>8.2f} "
                  f"{p['max']:>8.2f}")
    for result in [*pruned, *reports]:
        print("\n".join(result.lines()))
    for f in figures:
        print(json.dumps({"workload": f.workload, "unit": f.unit, "pgq": round(f.pgq, 1),
                          "baseline": round(f.baseline, 1) if f.baseline else None,
                          "baseline_name": f.baseline_name,
                          "ratio": round(f.ratio, 3) if f.ratio else None}))
    for lat in latencies:
        print(json.dumps({"workload": lat.workload, "unit": "ms", "jobs": len(lat.samples),
                          "rate": lat.rate, "seconds": lat.seconds,
                          "cpu_busy": [round(b, 3) for b in lat.cpu_busy],
                          **{k: round(v, 3) for k, v in lat.summary().items()},
                          "phases": {phase: {k: round(v, 3) for k, v in lat.summary(values).items()}
                                     for phase, values in lat.phases.items()}}))
    for result in pruned:
        print(json.dumps(result.json()))
    for report in reports:
        for line in report.json():
            print(json.dumps(line))


def _compare(admin: str, chosen: list[str], kwargs: dict[str, int], *, describe: bool
             ) -> list[ComparisonResult]:
    """The comparison's drains, in one call: they share each repetition's ceiling."""
    compared = [name for name in chosen if name in COMPARISON]
    if not compared:
        return []
    url = fresh_database(admin, COMPARISON_DATABASE)
    if describe:
        _describe(url)
    return [comparison(url, compared, **kwargs)]


def _web_reads(admin: str, chosen: list[str], kwargs: dict[str, int], *, describe: bool
               ) -> list[WebReadsResult]:
    if not any(name in WEB_READS for name in chosen):
        return []
    url = ensure_database(admin)  # kept between runs: its 10 million rows take minutes to seed
    if describe:
        _describe(url)
    return [WEB_READS[name](url, **kwargs) for name in chosen if name in WEB_READS]


def _describe(url: str) -> None:
    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"PostgreSQL {server}", file=sys.stderr)


if __name__ == "__main__":
    main()
