"""The loss curve as an inline SVG made on the server (no plotting library, no script, no CDN).

Invariant: the output is a complete ``<svg>`` element whose only variable content is numbers
(formatted floats), so it is safe to insert into a page unescaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

W, H = 560, 220
PAD_L, PAD_R, PAD_T, PAD_B = 48, 12, 12, 28


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def loss_svg(curve: Sequence[Sequence[float]], reference: float | None = None) -> str:
    """``curve`` is ``[[step, loss], ...]``; ``reference`` the held-out loss line (dashed)."""
    points = [(float(p[0]), float(p[1])) for p in curve
              if len(p) >= 2 and all(math.isfinite(float(x)) for x in p[:2])]
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if reference is not None and math.isfinite(reference):
        ys = [*ys, reference]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * ph

    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                    for i, (x, y) in enumerate(points))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5"/>' for x, y in points)
    ref = ""
    if reference is not None and math.isfinite(reference):
        ref = (f'<line class="ref" x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(reference):.1f}" '
               f'y2="{sy(reference):.1f}"/><text x="{W - PAD_R}" y="{sy(reference) - 4:.1f}" '
               f'text-anchor="end">held-out (reference) {_fmt(reference)}</text>')
    axes = (f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}"/>'
            f'<line x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}"/>'
            f'<text x="{PAD_L - 4}" y="{PAD_T + 10}" text-anchor="end">{_fmt(y1)}</text>'
            f'<text x="{PAD_L - 4}" y="{H - PAD_B}" text-anchor="end">{_fmt(y0)}</text>'
            f'<text x="{PAD_L}" y="{H - 8}">step {_fmt(x0)}</text>'
            f'<text x="{W - PAD_R}" y="{H - 8}" text-anchor="end">step {_fmt(x1)}</text>')
    return (f'<svg class="loss" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="training loss by step"><g class="axes">{axes}</g>{ref}'
            f'<path class="curve" d="{path}"/><g class="dots">{dots}</g></svg>')
