"""How ``bench.bulk_retry`` reports its runs: a table of claim latencies per window, the
retry's duration and rate, the profile of the database's active backends, and the
interrupted run. The figure is p99(during) / p99(before) of the claim latency (target
``TARGET``); ``--runs N`` reports each run and the pooled samples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.prune import percentile

TARGET = 1.5
WINDOWS = ("before", "during", "after")
PROFILE_TOP = 6
"""Backend states listed per window (the most frequent)."""


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50) * 1e3, "p95": percentile(values, 95) * 1e3,
            "p99": percentile(values, 99) * 1e3, "max": max(values) * 1e3}


def ratio(latency: dict[str, dict[str, list[float]]], measure: str = "claim") -> float:
    return (_ms(latency["during"][measure])["p99"]
            / _ms(latency["before"][measure])["p99"])


@dataclass
class BulkRetryResult:
    workload: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def pooled(self) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {
            w: {"claim": [], "pickup": []} for w in WINDOWS}
        for run in self.runs:
            for w in WINDOWS:
                for measure in ("claim", "pickup"):
                    out[w][measure] += run["latency"][w][measure]
        return out

    def lines(self) -> list[str]:
        out = [f"{'bulk_retry window':<24} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  "
               "ms, claim = started_at - run_at (pickup: enqueue call to task); jobs, CPU busy"]
        for i, run in enumerate(self.runs, 1):
            for w in WINDOWS:
                for measure in ("claim", "pickup"):
                    values = run["latency"][w][measure]
                    s = _ms(values)
                    label = f"{i}: {w} {measure}"
                    extra = (f"  {len(values)} jobs, {run['cpu'][w]:.0%}"
                             if measure == "claim" else "")
                    out.append(f"{label:<24} {s['p50']:>7.2f} {s['p95']:>7.2f} "
                               f"{s['p99']:>7.2f} {s['max']:>7.2f}{extra}")
            r = run["retry"]
            out.append(f"{f'{i}: p99 during/before':<24} {ratio(run['latency']):>7.2f}  target "
                       f"<= {TARGET}  (pickup: {ratio(run['latency'], 'pickup'):.2f})")
            out.append(f"{f'{i}: retry':<24} {r['seconds']:.1f} s = {r['rate']:,.0f} jobs/s; "
                       f"{r['batches']} batches, first after {r['first_batch_after']:.2f} s, "
                       f"batch p50 {r['batch_p50'] * 1e3:.0f} ms, max {r['batch_max'] * 1e3:.0f} "
                       f"ms; progress bar drew {r['progress_steps']} percentages; fed "
                       f"{run['fed']:,} live jobs")
            n = run["interrupt"]
            out.append(f"{f'{i}: interrupted':<24} SIGINT at {n['at_signal']:,} actions, exit "
                       f"{n['exit']}, {n['committed']:,} committed (the CLI said "
                       f"{n['cli_said']:,}); rerun retried {n['rerun_changed']:,}: each job once")
            for w in WINDOWS:
                tally = Counter(run["profile"].get(w, {}))
                samples = tally.pop("samples", 0)
                top = ", ".join(f"{k} {v / samples:.2f}" for k, v in tally.most_common(PROFILE_TOP))
                locks = sum(v for k, v in tally.items() if " Lock:" in k)
                out.append(f"{f'{i}: active in {w}':<24} per sample ({samples}): {top}; "
                           f"waiting on a lock: {locks / samples:.2f}")
        if len(self.runs) > 1:
            pooled = self.pooled()
            for w in ("before", "during"):
                s = _ms(pooled[w]["claim"])
                out.append(f"{f'pooled {w} claim':<24} {s['p50']:>7.2f} {s['p95']:>7.2f} "
                           f"{s['p99']:>7.2f} {s['max']:>7.2f}")
            out.append(f"{'pooled p99 during/before':<24} {ratio(pooled):>7.2f}")
        out.append("checks passed: every dead letter available once with its 3 errors entries "
                   "and one retry action, interrupted run resumed with none twice")
        return out

    def json(self) -> list[dict[str, Any]]:
        docs = []
        for run in self.runs:
            docs.append({
                "workload": self.workload, "unit": "ms",
                "ratio_p99": round(ratio(run["latency"]), 3),
                "ratio_p99_pickup": round(ratio(run["latency"], "pickup"), 3),
                "windows": {w: {m: {k: round(v, 3) for k, v in _ms(run["latency"][w][m]).items()}
                                | {"jobs": len(run["latency"][w][m])}
                                for m in ("claim", "pickup")} | {"cpu_busy": round(run["cpu"][w], 3)}
                            for w in WINDOWS},
                "retry": {k: round(v, 3) if isinstance(v, float) else v
                          for k, v in run["retry"].items()},
                "interrupt": run["interrupt"], "fed": run["fed"]})
        return docs
