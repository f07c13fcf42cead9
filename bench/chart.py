"""The benchmark chart: grouped bars per scenario and the ratios against their targets.

    bench/.venv/bin/python bench/chart.py results.json results.png

bench/run.py calls this with the bench venv's Python (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

with open(sys.argv[1]) as source:
    report = json.load(source)
results, labels, params = report["results"], report["labels"], report["params"]
colors = {
    "warpsocket": "#1f77b4",
    "warpsocket-call": "#aec7e8",
    "autobahn": "#ff7f0e",
    "websockets": "#2ca02c",
    "socketio": "#d62728",
}
order = ["warpsocket", "warpsocket-call", "autobahn", "websockets", "socketio"]
panels = [
    (
        "fanout",
        "deliveries_per_s",
        f"Fan-out: {params['fanout_clients']:,} clients x {params['fanout_broadcasts']}\n"
        "deliveries/s (higher is better)",
    ),
    (
        "rtt",
        "round_trips_per_s",
        f"Acked round trip: {params['rtt_clients']} clients\nround trips/s (higher is better)",
    ),
    (
        "rtt",
        ("latency_ms_p50", "latency_ms_p99"),
        "Round-trip latency, ms\np50 and p99 (lower is better)",
    ),
    (
        "connect",
        "rss_per_connection_kb",
        f"Memory: {params['idle_connections']:,} idle connections\n"
        "KiB RSS per connection (lower is better)",
    ),
    (
        "connect",
        "connections_per_s",
        f"Connection rate to {params['idle_connections']:,}\nconnections/s (higher is better)",
    ),
]
fig, axes = plt.subplots(2, 3, figsize=(16, 9))
axes = axes.flatten()
for ax, (scenario, key, title) in zip(axes, panels, strict=False):
    data = results.get(scenario, {})
    names = [n for n in order if n in data]
    keys = key if isinstance(key, tuple) else (key,)
    width = 0.8 / len(keys)
    for k, metric in enumerate(keys):
        values = [data[n].get(metric) or 0 for n in names]
        xs = [i + (k - (len(keys) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(
            xs,
            values,
            width * 0.95,
            color=[colors[n] for n in names],
            alpha=1.0 if k == 0 else 0.55,
            edgecolor="black",
            linewidth=0.5,
            label=metric.replace("latency_ms_", "") if len(keys) > 1 else None,
        )
        for bar, value in zip(bars, values, strict=True):
            text = (
                f"{value:,.0f}"
                if value >= 100
                else f"{value:,.1f}"
                if value >= 1
                else f"{value:.2f}"
            )
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([labels[n] for n in names], rotation=20, ha="right", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    if len(keys) > 1:
        ax.legend(fontsize=8)
ax = axes[-1]
rows = [r for r in report["ratios"] if r["value"] is not None]
ax.barh(
    range(len(rows)),
    [r["value"] for r in rows],
    color=["#2ca02c" if r["met"] else "#d62728" for r in rows],
)
for i, r in enumerate(rows):
    target = float(r["target"].split()[1])
    ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
    ax.annotate(
        f"{r['value']:.2f} (target {r['target']})",
        (r["value"], i),
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
        fontsize=8,
    )
ax.set_yticks(range(len(rows)))
ax.set_yticklabels([r["name"].replace(": ", ":\n") for r in rows], fontsize=8)
ax.set_xscale("log")
ax.set_xlim(0.1, 40)
ax.invert_yaxis()
ax.set_title("Ratios from this run (black line: target;\ngreen met, red missed)", fontsize=10)
m = report["machine"]
fig.suptitle(
    f"WarpSocket benchmark ({report['mode']}) - {m['cpu_model']}, {m['cores']} cores; "
    f"server on core 0, load generator on core 1 - Python {m['python']}, Node {m['node']} - "
    f"{report['finished_at'][:16]}",
    fontsize=11,
)
fig.tight_layout(rect=(0, 0, 1, 0.96))
fig.savefig(sys.argv[2], dpi=100)
