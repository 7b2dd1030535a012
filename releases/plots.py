"""The model card's plots, as PNG bytes that are identical for identical inputs.

matplotlib's Agg backend renders deterministically; what varies between runs is the PNG
metadata (the "Software" text chunk carries the matplotlib version, no timestamp is
written for PNG), so it is dropped, and size and dpi are fixed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

_DPI = 100
_SIZE = (6.4, 4.0)


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "saekit", "font.family": "DejaVu Sans"})
    fig, ax = plt.subplots(figsize=_SIZE, dpi=_DPI)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def density_label(name: str, vals: Sequence[float], width: int | None) -> str:
    """The legend entry of one SAE: how many latents the histogram holds and how many are dead."""
    dead = sum(1 for d in vals if d <= 0)
    of = f"{len(vals)} of {width}" if width and width != len(vals) else f"{len(vals)}"
    return f"{name} ({of} latents, {dead} dead)"


def density_histogram(
    densities: dict[str, Sequence[float]], n_tokens: dict[str, int | None], d_sae: dict[str, int | None] | None = None
) -> bytes:
    """Histogram of log10 feature density per SAE (dead latents counted at the left edge).

    Feature density = fraction of tokens on which a latent fires (SAELens' "feature
    density" plot, log10 scale).
    """
    plt, fig, ax = _figure()
    lo = -8.0
    for name in sorted(densities):
        vals = densities[name]
        floor = math.log10(1.0 / n_tokens[name]) - 0.5 if n_tokens.get(name) else lo
        logs = [math.log10(d) if d > 0 else floor for d in vals]
        lo = min(lo, min(logs, default=lo))
        ax.hist(logs, bins=60, range=(-8.0, 0.0), histtype="step", linewidth=1.5,
                label=density_label(name, vals, (d_sae or {}).get(name)))
    ax.set_xlabel("log10 feature density (fraction of tokens where the latent fires)")
    ax.set_ylabel("latents")
    ax.set_title("Feature density")
    if densities:
        ax.legend(fontsize=8, loc="upper left")
    return _png(plt, fig)


def l0_vs_explained_variance(points: dict[str, tuple[float | None, float | None]]) -> bytes:
    """Scatter of L0 (mean active latents per token) against explained variance, one point per SAE."""
    plt, fig, ax = _figure()
    for name in sorted(points):
        l0, ev = points[name]
        if l0 is None or ev is None:
            continue
        ax.scatter([l0], [ev], s=40)
        ax.annotate(name, (l0, ev), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("L0 (mean active latents per token)")
    ax.set_ylabel("explained variance")
    ax.set_title("Sparsity vs reconstruction")
    ax.grid(True, alpha=0.3)
    return _png(plt, fig)
