"""The report: the table printed at the end of a run and the chart (docs/benchmark.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import CHART, GROWTH_TARGET, P99_TARGET_MS, RATIO_TARGET


def busy(measure: dict[str, Any]) -> str:
    shares = measure.get("machine_busy", {})
    return " / ".join(f"{100 * shares[k]:.0f} %" for k in ("purchase", "noop")) if shares else "-"


def table(results: dict[str, Any]) -> str:
    main, lat, cost, growth = results["throughput"], results["latency"], results["cost"], results["growth"]
    rows = [
        ("purchases/s (empty table)", f"{main['purchases_per_s']:.0f}", ""),
        ("no-op tasks/s", f"{main['noop_per_s']:.0f}", ""),
        ("ratio purchases / no-op", f"{main['ratio']:.2f}", f">= {RATIO_TARGET}"),
        ("CPUs busy: purchases / no-op", busy(main), "(both cores; 100 % = CPU-bound)"),
        ("purchases per INSERT in the drain", f"{main['purchases_per_insert']:.1f}", "(queued ones go together)"),
        ("offered rate for latency", f"{lat['offered_rate_per_s']:.0f}/s", "half the purchase rate"),
        ("enqueue-to-commit p50", f"{lat['p50_ms']:.1f} ms", ""),
        ("enqueue-to-commit p99", f"{lat['p99_ms']:.1f} ms", f"< {P99_TARGET_MS:.0f} ms"),
        ("PostgreSQL round trips / purchase", f"{cost['round_trips_per_purchase']:.2f}", ""),
        ("SQL statements / purchase", f"{cost['statements_per_purchase']:.2f}", ""),
        ("index queries / task (cache fresh)", f"{cost['index_queries_per_task']:.2f}", "0"),
        (f"purchases/s with {growth['seeded_rows']:,} rows", f"{growth['purchases_per_s']:.0f}", "(drains in turns"),
        ("purchases/s, empty table", f"{growth['empty_purchases_per_s']:.0f}", " with these)"),
        ("growth: purchase rate change", f"{100 * growth['change']:+.1f} %", f"within ±{100 * GROWTH_TARGET:.0f} %"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"worker: {main['label']}, N={main['n']}", f"{'measure':<{width}}  {'value':>12}  target"]
    lines += [f"{name:<{width}}  {value:>12}  {target}" for name, value, target in rows]
    lines += ["", "settings sweep (N each):"]
    for s in results["sweep"]:
        if "hung" in s:
            lines.append(f"  {s['label']:<28} HUNG: {s['hung']}")
            continue
        lines.append(
            f"  {s['label']:<28} purchases {s['purchases_per_s']:6.0f}/s  no-op {s['noop_per_s']:6.0f}/s  "
            f"ratio {s['ratio']:.2f}"
        )
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path = CHART) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.6, 1]})
    main, growth = results["throughput"], results["growth"]
    labels = [s["label"].replace(" c=", "\nc=").replace(" prefetch=", " pf=") for s in results["sweep"]]
    x = range(len(labels))
    width = 0.38
    noop = [s.get("noop_per_s", 0) for s in results["sweep"]]
    made = [s.get("purchases_per_s", 0) for s in results["sweep"]]
    left.bar([i - width / 2 for i in x], noop, width, label="no-op tasks/s")
    left.bar([i + width / 2 for i in x], made, width, label="purchases/s")
    for i, s in enumerate(results["sweep"]):
        note = "hung" if "hung" in s else f"{s['ratio']:.2f}"
        left.text(i + width / 2, made[i], note, ha="center", va="bottom", fontsize=8)
    n = len(labels)
    left.bar(n + 0.5 - width / 2, main["noop_per_s"], width, color="C0")
    left.bar(n + 0.5 + width / 2, main["purchases_per_s"], width, color="C1")
    note = {"ha": "center", "va": "bottom", "fontsize": 8}
    left.text(n + 0.5 + width / 2, main["purchases_per_s"], f"{main['ratio']:.2f}", **note)
    rows = f"{growth['seeded_rows'] / 1e6:g}M rows"
    left.bar(n + 1.5 - width / 2, growth["empty_purchases_per_s"], width, color="C1", alpha=0.6)
    left.bar(n + 1.5 + width / 2, growth["purchases_per_s"], width, color="C1")
    left.text(n + 1.5 + width / 2, growth["purchases_per_s"], f"{100 * growth['change']:+.1f} %", **note)
    labels += ["main\nempty", f"growth: empty\n| {rows}"]
    left.set_xticks([*x, n + 0.5, n + 1.5], labels, fontsize=7)
    left.set_ylabel("tasks per second")
    left.set_title(f"Throughput (over the bars: purchases / no-op; main: {main['label']})", fontsize=10)
    left.legend(fontsize=8)

    lat = results["latency"]
    names = ["p50", "p90", "p99", "max"]
    values = [lat[f"{k}_ms"] for k in names]
    right.bar(names, values, color=["C2", "C2", "C3", "C7"])
    for i, v in enumerate(values):
        right.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    right.axhline(P99_TARGET_MS, color="C3", linestyle="--", linewidth=1, label=f"p99 target {P99_TARGET_MS:.0f} ms")
    right.set_ylabel("enqueue to commit, ms")
    right.set_title(f"Latency at {lat['offered_rate_per_s']:.0f} purchases/s offered")
    right.legend(fontsize=8)
    fig.suptitle(f"kc_tasks benchmark, {results['machine']['nproc']} cores, {results['finished_at']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
