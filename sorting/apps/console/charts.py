"""A small server-rendered SVG chart (no JavaScript library, no CDN): items per time bucket as
bars, the reject rate as a line on a 0-100 % right axis."""

from __future__ import annotations

import time

from markupsafe import Markup, escape

WIDTH, HEIGHT = 960, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 48, 16, 32


def _nice_max(value: int) -> int:
    """Round an axis maximum up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def counts_chart(buckets: list[tuple[float, int, int]], *, bucket_s: float) -> Markup:
    """SVG of ``(start time, items, rejected)`` buckets; an empty note when there are none."""
    if not buckets or not any(n for _, n, _ in buckets):
        return Markup('<p class="muted">No decisions to chart.</p>')
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = _nice_max(max(n for _, n, _ in buckets))
    bar_w = plot_w / len(buckets)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="items and reject rate over time" xmlns="http://www.w3.org/2000/svg">']
    for frac in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{int(top * frac)}</text>')
        parts.append(f'<text class="axis rate" x="{LEFT + plot_w + 6}" y="{y + 4:.1f}">{int(100 * frac)}%</text>')
    points = []
    for i, (t, n, rejected) in enumerate(buckets):
        x = LEFT + i * bar_w
        h = plot_h * n / top
        label = escape(f"{time.strftime('%H:%M', time.localtime(t))}: {n} items, {rejected} rejected")
        parts.append(f'<rect class="bar" x="{x + 1:.1f}" y="{TOP + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                     f'height="{h:.1f}"><title>{label}</title></rect>')
        if n:
            points.append(f"{x + bar_w / 2:.1f},{TOP + plot_h * (1 - rejected / n):.1f}")
    if points:
        parts.append(f'<polyline class="rate" points="{" ".join(points)}"/>')
    step = max(1, len(buckets) // 8)
    fmt = "%H:%M" if bucket_s * len(buckets) < 86400 else "%d %b %H:%M"
    for i in range(0, len(buckets), step):
        x = LEFT + i * bar_w
        parts.append(f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 10}">'
                     f'{escape(time.strftime(fmt, time.localtime(buckets[i][0])))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
