"""matplotlib for the ledger's figures, headless; the ledger needs the `plots` (or `dev`) extra."""

from __future__ import annotations

from typing import Any

from albert_gpt.errors import ConfigError


def pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the ledger draws its figures with matplotlib: pip install -e '.[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_bars(intervals: list[Any], log_scale: bool = False) -> tuple[list[float], list[list[float]]]:
    """Means and matplotlib's [below, above] error lengths for a list of Intervals; on a log axis the
    lower end is kept above zero."""
    means = [iv.mean for iv in intervals]
    low = [max(iv.low, m * 1e-3) if log_scale else iv.low for m, iv in zip(means, intervals)]
    return means, [[m - lo for m, lo in zip(means, low)], [iv.high - m for m, iv in zip(means, intervals)]]


def save(fig: Any, path: Any) -> None:
    """Lay out, write as PNG and release a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
