"""The benchmark chart: grouped bars per scenario and the ratios against their targets.

    bench/.venv/bin/python bench/chart.py results.json results.png

bench/run.py calls this with the bench venv's Python (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import math
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
fanout_size = f"{params['fanout_clients']:,} clients x {params['fanout_broadcasts']}"
cluster_size = f"{params['cluster_clients']:,} clients x {params['cluster_broadcasts']}"
# (title, [(scenario, metric, series label)]): one bar per server and series.
panels = [
    (
        f"Fan-out, burst: {fanout_size}\ndeliveries/s (higher is better)",
        [("fanout", "deliveries_per_s", None)],
    ),
    (
        f"Fan-out, paced (1 per loop turn): {fanout_size}\ndeliveries/s (higher is better)",
        [("fanout-paced", "deliveries_per_s", None)],
    ),
    (
        f"Cluster fan-out, 2 nodes + Redis: {cluster_size}\ndeliveries/s (higher is better)",
        [("fanout-cluster", "deliveries_per_s", None)],
    ),
    (
        "Fan-out server CPU us per delivery\n(cluster: both nodes; lower is better)",
        [
            ("fanout", "server_cpu_us_per_op", "burst"),
            ("fanout-paced", "server_cpu_us_per_op", "paced"),
            ("fanout-cluster", "server_cpu_us_per_op", "cluster"),
        ],
    ),
    (
        f"Acked round trip: {params['rtt_clients']} clients\nround trips/s (higher is better)",
        [("rtt", "round_trips_per_s", None)],
    ),
    (
        "Round-trip latency, ms\np50 and p99 (lower is better)",
        [("rtt", "latency_ms_p50", "p50"), ("rtt", "latency_ms_p99", "p99")],
    ),
    (
        f"Memory: {params['idle_connections']:,} idle connections\n"
        "KiB RSS per connection (lower is better)",
        [("connect", "rss_per_connection_kb", None)],
    ),
    (
        f"Connection rate to {params['idle_connections']:,}\nconnections/s (higher is better)",
        [("connect", "connections_per_s", None)],
    ),
]
# Only the panels of scenarios that ran (and of their series, those that ran).
panels = [
    (title, [s for s in series if s[0] in results])
    for title, series in panels
    if any(s[0] in results for s in series)
]
ncols = 3
nrows = max(1, math.ceil((len(panels) + 1) / ncols))
fig, axes = plt.subplots(nrows, ncols, figsize=(16, 4.5 * nrows), squeeze=False)
axes = axes.flatten()
for ax in axes[len(panels) : -1]:
    ax.axis("off")
for ax, (title, series) in zip(axes, panels, strict=False):
    names = [n for n in order if any(n in results[s[0]] for s in series)]
    width = 0.8 / len(series)
    for k, (scenario, metric, label) in enumerate(series):
        data = results[scenario]
        values = [(data.get(n) or {}).get(metric) or 0 for n in names]
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(
            xs,
            values,
            width * 0.95,
            color=[colors[n] for n in names],
            alpha=1.0 - 0.3 * k,
            edgecolor="black",
            linewidth=0.5,
            hatch=("", "//", "..")[k % 3],
            label=label,
        )
        for bar, value in zip(bars, values, strict=True):
            if not value:
                continue
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
                fontsize=7 if len(series) > 2 else 8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([labels[n] for n in names], rotation=20, ha="right", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.margins(y=0.15)
    if len(series) > 1:
        ax.legend(fontsize=8)
ax = axes[-1]
rows = [r for r in report["ratios"] if r["value"] is not None]
ax.barh(
    range(len(rows)),
    [r["value"] for r in rows],
    color=["#999999" if r["met"] is None else "#2ca02c" if r["met"] else "#d62728" for r in rows],
)
for i, r in enumerate(rows):
    if r["target"] != "-":
        target = float(r["target"].split()[1])
        ax.plot([target, target], [i - 0.4, i + 0.4], color="black", linewidth=2)
    note = f"target {r['target']}" if r["target"] != "-" else "no target"
    ax.annotate(
        f"{r['value']:.2f} ({note})",
        (r["value"], i),
        xytext=(3, 0),
        textcoords="offset points",
        va="center",
        fontsize=8,
    )
ax.set_yticks(range(len(rows)))
ax.set_yticklabels([r["name"].replace(": ", ":\n") for r in rows], fontsize=7)
ax.set_xscale("log")
ax.set_xlim(0.1, 40)
ax.invert_yaxis()
ax.set_title(
    "Ratios from this run (black line: target;\ngreen met, red missed, grey no target)",
    fontsize=10,
)
m = report["machine"]
fig.suptitle(
    f"WarpSocket benchmark ({report['mode']}) - {m['cpu_model']}, {m['cores']} cores; "
    f"server on core 0, load generator on core 1 - Python {m['python']}, Node {m['node']} - "
    f"{report['finished_at'][:16]}",
    fontsize=11,
)
fig.tight_layout(rect=(0, 0, 1, 1 - 0.04 / nrows * 2))
fig.savefig(sys.argv[2], dpi=100)
