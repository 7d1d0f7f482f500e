#!/usr/bin/env python3
"""Draws ferrolb's Grafana dashboard from a lab run's own series.

There is no Grafana on these machines, so this renders what the dashboard
(deploy/monitoring/grafana-dashboard.json) would show: one plot per panel,
every query's series as Prometheus returned them over the whole run.

    FERROLB_DASHBOARD_DATA=/tmp/dash cargo test -p ferrolb-tests --test product \\
        kubectl_apply_to_reachable -- --test-threads 1
    python3 tests/monitoring/plot_dashboard.py /tmp/dash/layer2.json docs/img/dashboard-layer2.png

Needs matplotlib (pip install matplotlib). The series come from the product
tests' real Prometheus (tests/src/prometheus.rs, export_dashboard).
"""
import json
import math
import re
import sys
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def legend(fmt, metric):
    if not fmt:
        return ",".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def main(src, out):
    data = json.load(open(src))
    panels = [p for p in data["panels"] if p["type"] != "row"]
    cols = 4
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 3.0), squeeze=False)
    t0 = None
    for p in panels:
        for t in p["targets"]:
            for s in t["series"]:
                if s["values"]:
                    first = s["values"][0][0]
                    t0 = first if t0 is None else min(t0, first)
    for ax, p in zip(axes.flat, panels):
        ax.set_title(p["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        lines = 0
        if p["type"] == "table":
            ax.axis("off")
            text = []
            for t in p["targets"]:
                for s in t["series"]:
                    if not s["values"]:
                        continue
                    v = float(s["values"][-1][1])
                    m = s["metric"]
                    when = datetime.fromtimestamp(v / 1000, timezone.utc).strftime("%H:%M:%S") if p["unit"] == "dateTimeAsIso" else f"{v:g}"
                    text.append(" ".join(m.get(k, "") for k in ("service", "vip", "mode", "node", "peer") if k in m) + f"  since {when}")
            ax.text(0, 1, "\n".join(text[:12]) or "(no data)", va="top", family="monospace", fontsize=7)
            continue
        for t in p["targets"]:
            for s in t["series"]:
                xs = [v[0] - t0 for v in s["values"]]
                ys = [float(v[1]) for v in s["values"]]
                if not xs or all(math.isnan(y) for y in ys):
                    continue
                ax.plot(xs, ys, label=legend(t.get("legend"), s["metric"]), linewidth=1.2)
                lines += 1
        if lines == 0:
            ax.text(0.5, 0.5, "(no data in this mode)", ha="center", va="center", fontsize=8, transform=ax.transAxes)
        else:
            ax.legend(fontsize=6, loc="best")
        ax.set_xlabel("seconds into the run", fontsize=7)
        if p.get("unit"):
            ax.set_ylabel(p["unit"], fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"ferrolb dashboard, lab run '{data['name']}' (tests/tests/product.rs, real Prometheus)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
