"""``report``: one self-contained HTML page (inline SVG, no scripts, no external assets).

Plots accuracy and loss per round, tokens per agent per round, quality and reputation
over time and bundle sizes, and shows the ledger checkpoint with its verification status.
Built from the round summaries the coordinator stores, so it works offline anywhere.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

WIDTH, HEIGHT, PAD = 560, 240, 58
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


def _scale(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if low == high:
        low, high = low - 1.0, high + 1.0
    return low, high


def line_chart(
    title: str, xs: Sequence[int], series: Mapping[str, Sequence[float | None]], y_label: str = ""
) -> str:
    """An SVG line chart; ``None`` values leave gaps."""
    all_values = [v for values in series.values() for v in values if v is not None]
    low, high = _scale(all_values)
    x_low, x_high = (min(xs), max(xs)) if xs else (0, 1)
    x_span = max(x_high - x_low, 1)

    def px(x: float) -> float:
        return PAD + (x - x_low) / x_span * (WIDTH - 2 * PAD)

    def py(y: float) -> float:
        return HEIGHT - PAD + (y - low) / (high - low) * -(HEIGHT - 2 * PAD)

    parts = [_frame(title, y_label, low, high, xs, px)]
    for i, (name, values) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        points = [(px(x), py(v)) for x, v in zip(xs, values, strict=False) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>'
            )
        parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in points)
        parts.append(_legend(i, name, color))
    return _svg(parts)


def bar_chart(
    title: str, xs: Sequence[int], series: Mapping[str, Sequence[float]], y_label: str = ""
) -> str:
    """Grouped SVG bars, one group per x."""
    values = [v for vals in series.values() for v in vals]
    high = max(values) if values else 1.0
    high = high if high > 0 else 1.0
    n = max(len(series), 1)
    group = (WIDTH - 2 * PAD) / max(len(xs), 1)
    bar = group * 0.8 / n
    parts = [
        _frame(
            title,
            y_label,
            0.0,
            high,
            xs,
            lambda x: PAD + (xs.index(int(x)) + 0.5) * group if x in xs else PAD,
        )
    ]
    for i, (name, vals) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        for j, v in enumerate(vals):
            h = v / high * (HEIGHT - 2 * PAD)
            x = PAD + j * group + group * 0.1 + i * bar
            parts.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - PAD - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{color}"><title>{html.escape(name)} round '
                f"{xs[j]}: {v:g}</title></rect>"
            )
        parts.append(_legend(i, name, color))
    return _svg(parts)


def _frame(title: str, y_label: str, low: float, high: float, xs: Sequence[int], px: Any) -> str:
    ticks = []
    for k in range(5):
        value = low + (high - low) * k / 4
        y = HEIGHT - PAD - (HEIGHT - 2 * PAD) * k / 4
        ticks.append(
            f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#eee"/><text x="{PAD - 6}" y="{y + 4:.1f}" font-size="10" '
            f'text-anchor="end">{value:.3g}</text>'
        )
    for x in xs:
        ticks.append(
            f'<text x="{px(x):.1f}" y="{HEIGHT - PAD + 14}" font-size="10" '
            f'text-anchor="middle">{x}</text>'
        )
    return (
        f'<text x="{WIDTH / 2}" y="16" font-size="13" text-anchor="middle" '
        f'font-weight="bold">{html.escape(title)}</text>'
        f'<text x="12" y="{HEIGHT / 2}" font-size="10" transform="rotate(-90 12 '
        f'{HEIGHT / 2})" text-anchor="middle">{html.escape(y_label)}</text>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" font-size="10" '
        f'text-anchor="middle">round</text>'
        + "".join(ticks)
        + f'<line x1="{PAD}" x2="{PAD}" y1="{PAD}" y2="{HEIGHT - PAD}" stroke="#333"/>'
        f'<line x1="{PAD}" x2="{WIDTH - PAD}" y1="{HEIGHT - PAD}" y2="{HEIGHT - PAD}" '
        f'stroke="#333"/>'
    )


def _legend(i: int, name: str, color: str) -> str:
    x = WIDTH - PAD + 6
    y = PAD + i * 14
    return (
        f'<rect x="{x}" y="{y - 8}" width="8" height="8" fill="{color}"/>'
        f'<text x="{x + 11}" y="{y}" font-size="10">{html.escape(name[:14])}</text>'
    )


def _svg(parts: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH + 90}" height="{HEIGHT}" '
        f'role="img">' + "".join(parts) + "</svg>"
    )


def render(
    summaries: list[dict[str, Any]], status: dict[str, Any], verification: dict[str, Any]
) -> str:
    """The report page from round summaries, coordinator status and a ledger audit."""
    rounds = [s["round"] for s in summaries]
    agents = sorted({r["agent"] for s in summaries for r in s.get("rewards", [])})

    def per_agent(field: str) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for agent in agents:
            values: list[float | None] = []
            for s in summaries:
                match = [r for r in s.get("rewards", []) if r["agent"] == agent]
                values.append(float(match[0][field]) if match else None)
            out[agent] = values
        return out

    tokens = {a: [v or 0.0 for v in vals] for a, vals in per_agent("tokens").items()}
    charts = [
        line_chart(
            "Global accuracy per round",
            rounds,
            {"accuracy": [s.get("accuracy") for s in summaries]},
            "accuracy",
        ),
        line_chart(
            "Global loss per round", rounds, {"loss": [s.get("loss") for s in summaries]}, "loss"
        ),
        bar_chart("Tokens per agent per round", rounds, tokens, "tokens"),
        line_chart("Measured quality per agent", rounds, per_agent("quality"), "quality"),
        line_chart("Reputation per agent", rounds, per_agent("reputation"), "reputation"),
        bar_chart(
            "Update bytes received per round",
            rounds,
            {"bytes in": [float(s.get("bytes_in", 0)) for s in summaries]},
            "bytes",
        ),
    ]
    ok = verification.get("ok", False)
    rows = "".join(
        f"<tr><td>{html.escape(a['name'])}</td><td>{html.escape(a['status'])}</td>"
        f"<td>{a['balance']}</td><td>{a['reputation']:.2f}</td><td>{a['streak']}</td></tr>"
        for a in status.get("agents", [])
    )
    cp = status.get("checkpoint", {})
    summary_rows = "".join(
        f"<tr><td>{s['round']}</td><td>{s['participants']}</td>"
        f"<td>{s['tokens_distributed']}</td><td>{s['average_quality']:.3f}</td>"
        f"<td>{'' if s.get('accuracy') is None else format(s['accuracy'], '.3f')}</td>"
        f"<td>{'' if s.get('loss') is None else format(s['loss'], '.4f')}</td></tr>"
        for s in summaries
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>LL TOKEN OFFLINE report: {html.escape(status.get("federation", ""))}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}}
h1{{font-size:20px}} h2{{font-size:16px;margin-top:28px}}
.charts{{display:flex;flex-wrap:wrap;gap:12px}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 8px}}
.ok{{color:#1a7f37;font-weight:bold}} .bad{{color:#c62828;font-weight:bold}}
code{{font-size:12px}}
</style></head><body>
<h1>LL TOKEN OFFLINE: federation {html.escape(status.get("federation", ""))}</h1>
<p>Strategy {html.escape(str(status.get("strategy", "")))}, round {status.get("round")} of
{status.get("rounds")} ({html.escape(str(status.get("round_status", "")))}).
Generated {time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}.</p>
<h2>Ledger</h2>
<p>Checkpoint: {cp.get("size")} entries, root <code>{html.escape(str(cp.get("root")))}</code>.
Verification from scratch: <span class="{"ok" if ok else "bad"}">
{"intact" if ok else "FAILED: " + html.escape(str(verification.get("error")))}</span>;
total supply {status.get("total_supply")}.</p>
<h2>Rounds</h2>
<table><tr><th>round</th><th>participants</th><th>tokens</th><th>avg quality</th>
<th>accuracy</th><th>loss</th></tr>{summary_rows}</table>
<div class="charts">{"".join(charts)}</div>
<h2>Agents</h2>
<table><tr><th>agent</th><th>status</th><th>balance</th><th>reputation</th><th>streak</th>
</tr>{rows}</table>
</body></html>
"""


__all__ = ["bar_chart", "line_chart", "render"]
