"""The fleet report's figures, built from its per-GPU table (:func:`.tables.gpu_table`).

Each ``plot_*`` function returns a matplotlib Figure; :func:`report_figures` renders all four to
PNG bytes for embedding. matplotlib is imported inside the functions (Agg backend, through
:mod:`flopwatt.analysis.plots`), so importing this module costs nothing.

Conventions in every figure: one colour per SKU, filled markers for hardware and hollow ones
for simulated GPUs (the legend says so), outliers ringed in red and labelled with
``hostname/index``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flopwatt.analysis.plots import figure_png_bytes
from flopwatt.report.tables import MIN_COHORT, OUTLIER_Z, SIM

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_OUTLIER_COLOR = "#d62728"


def _figure(width: float = 9.0, height: float = 5.0) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    # Fixed margins with the legend in the right-hand quarter: a layout engine measures every
    # tick label and costs more than drawing the figure.
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.09, right=0.97 - 2.3 / width, bottom=0.14, top=0.91)
    return fig


def _plain_log_axis(axis: Any) -> None:
    """Log scale with plain numbers (no mathtext, which is slow to lay out) and no minor labels."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(NullFormatter())


def _label(row: pd.Series) -> str:
    idx = row.get("device_index")
    idx_text = "" if idx is None or pd.isna(idx) else f"/{int(idx)}"
    return f"{row.get('hostname') or '?'}{idx_text}"


def _sku_label(row: pd.Series) -> str:
    sku = row.get("sku")
    if sku is None or (isinstance(sku, float) and math.isnan(sku)):
        return str(row.get("name") or "unknown")
    return str(sku)


def _colors_for(gpus: pd.DataFrame) -> dict[str, Any]:
    """One colour per SKU of the whole table, so a SKU keeps its colour in every figure."""
    return _colors([_sku_label(r) for _, r in gpus.iterrows()])


def _colors(keys: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    # tab10 without its red (index 3), which marks outliers.
    palette = [cmap(i) for i in range(10) if i != 3]
    return {k: palette[i % len(palette)] for i, k in enumerate(sorted(set(keys)))}


def _no_data(ax: Axes, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _scatter_groups(
    ax: Axes,
    df: pd.DataFrame,
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    colors: dict[str, Any],
) -> None:
    """Points coloured by SKU, hollow when simulated, outliers ringed and labelled."""
    keys = [_sku_label(r) for _, r in df.iterrows()]
    sim = (df["source"] == SIM).to_numpy()
    keys_arr = np.array(keys, dtype=object)
    for key in sorted(set(keys)):
        color = colors[key]
        for is_sim in (False, True):
            m = (keys_arr == key) & (sim == is_sim)
            if not m.any():
                continue
            ax.scatter(
                x[m],
                y[m],
                s=40,
                marker="o",
                facecolors="none" if is_sim else [color],
                edgecolors=[color],
                linewidths=1.5,
                label=f"{key} ({'sim' if is_sim else 'hardware'})",
                zorder=3,
            )
    out = df["outlier"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    if out.any():
        ax.scatter(
            x[out],
            y[out],
            s=180,
            facecolors="none",
            edgecolors=_OUTLIER_COLOR,
            linewidths=2,
            label="outlier",
            zorder=4,
        )
        for (_, row), xi, yi in zip(df[out].iterrows(), x[out], y[out], strict=True):
            ax.annotate(
                f"{_label(row)} ({row.get('outlier_kind') or 'outlier'})",
                (xi, yi),
                xytext=(6, 6),
                textcoords="offset points",
                fontsize=8,
                color=_OUTLIER_COLOR,
            )


def _values(df: pd.DataFrame, column: str) -> np.ndarray[Any, Any]:
    return pd.to_numeric(df[column], errors="coerce").astype("float64").to_numpy()


def plot_efficiency_by_sku(gpus: pd.DataFrame) -> Figure:
    """Sustained GEMM ÷ spec peak per GPU, grouped by SKU and precision (burst as a tick)."""
    fig = _figure()
    ax = fig.add_subplot()
    df = gpus[gpus["sustained_over_spec_ratio"].notna()].copy()
    if df.empty:
        _no_data(ax, "sustained GEMM results against a spec peak")
        return fig
    df["_group"] = [f"{_sku_label(r)}\n{r['precision']}" for _, r in df.iterrows()]
    groups = sorted(set(df["_group"]))
    if len(groups) > 6:
        fig.set_size_inches(1.1 * len(groups) + 3, 5.0)
        fig.subplots_adjust(right=0.97 - 2.3 / (1.1 * len(groups) + 3))
    pos = {g: i for i, g in enumerate(groups)}
    # Spread points of one group sideways (deterministic) so they do not hide each other.
    offsets = df.groupby("_group").cumcount().to_numpy()
    counts = df.groupby("_group")["_group"].transform("size").to_numpy()
    x = np.array([pos[g] for g in df["_group"]], dtype=float) + 0.5 * (
        (offsets + 0.5) / counts - 0.5
    )
    y = _values(df, "sustained_over_spec_ratio")
    burst = _values(df, "burst_over_spec_ratio")
    has_burst = np.isfinite(burst)
    ax.scatter(
        x[has_burst], burst[has_burst], marker="_", s=120, color="grey", label="burst", zorder=2
    )
    _scatter_groups(ax, df, x, y, _colors_for(gpus))
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel("sustained GEMM FLOP/s ÷ spec peak")
    ax.set_ylim(bottom=0)
    ax.set_title("Delivered fraction of the spec peak, by SKU and precision")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_power_vs_flops(gpus: pd.DataFrame) -> Figure:
    """Mean power (W) over the sustained run against sustained FLOP/s, per GPU."""
    fig = _figure()
    ax = fig.add_subplot()
    df = gpus[gpus["mean_power_w"].notna() & gpus["sustained_flops_per_s"].notna()]
    if df.empty:
        _no_data(ax, "sustained runs with a power reading")
        return fig
    x = _values(df, "mean_power_w")
    y = _values(df, "sustained_flops_per_s") / 1e12
    _scatter_groups(ax, df, x, y, _colors_for(gpus))
    ax.set_xlabel("mean power over the sustained run (W)")
    ax.set_ylabel("sustained GEMM (TFLOP/s)")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_title("Power against delivered FLOP/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_energy_vs_physics(gpus: pd.DataFrame) -> Figure:
    """Measured energy per FLOP against the physics model's, log-log, with y = x; the
    inverse-view ceiling (TDP ÷ spec peak) of each SKU as a short grey bar."""
    fig = _figure()
    ax = fig.add_subplot()
    df = gpus[
        gpus["measured_energy_per_flop_j"].notna() & gpus["physics_energy_per_flop_j"].notna()
    ]
    if df.empty:
        _no_data(ax, "energy readings against a physics estimate")
        return fig
    x = _values(df, "physics_energy_per_flop_j") * 1e12
    y = _values(df, "measured_energy_per_flop_j") * 1e12
    ceiling = _values(df, "ceiling_energy_per_flop_j") * 1e12
    has_ceiling = np.isfinite(ceiling)
    ax.scatter(
        x[has_ceiling],
        ceiling[has_ceiling],
        marker="_",
        s=200,
        color="grey",
        label="ceiling (TDP ÷ spec peak)",
        zorder=2,
    )
    _scatter_groups(ax, df, x, y, _colors_for(gpus))
    finite = np.concatenate([x, y, ceiling[has_ceiling]])
    lo, hi = float(np.nanmin(finite)) / 2, float(np.nanmax(finite)) * 2
    ax.plot(
        [lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="measured = physics"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_axis(ax.xaxis)
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("physics model, arithmetic only (pJ/FLOP)")
    ax.set_ylabel("measured, all-in (pJ/FLOP)")
    ax.set_title("Measured energy per FLOP against the physics estimate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_outlier_scores(gpus: pd.DataFrame, threshold: float = OUTLIER_Z) -> Figure:
    """Robust z of sustained FLOP/s against robust z of energy per FLOP, with the ±threshold
    band: slow GPUs fall left, hungry ones high. A missing score (no energy reading, or a
    cohort too small) plots at 0."""
    from matplotlib.ticker import NullLocator

    fig = _figure()
    ax = fig.add_subplot()
    df = gpus[gpus["sustained_robust_z"].notna() | gpus["energy_robust_z"].notna()]
    if df.empty:
        _no_data(ax, f"cohorts of {MIN_COHORT}+ GPUs to score")
        return fig
    x = np.nan_to_num(_values(df, "sustained_robust_z"), nan=0.0)
    y = np.nan_to_num(_values(df, "energy_robust_z"), nan=0.0)
    _scatter_groups(ax, df, x, y, _colors_for(gpus))
    for v in (-threshold, threshold):
        ax.axvline(v, color=_OUTLIER_COLOR, linestyle=":", linewidth=1)
        ax.axhline(v, color=_OUTLIER_COLOR, linestyle=":", linewidth=1)
    lim = max(threshold * 1.5, float(np.max(np.abs(np.concatenate([x, y])))) * 2.0)
    # Linear inside ±threshold, logarithmic beyond: a z of 80 must not squash the cohort.
    ticks = [0.0, threshold, *(10.0**k for k in range(1, 7) if 10.0**k < lim)]
    ticks = sorted({*ticks, *(-t for t in ticks)})
    for axis_scale in (ax.set_xscale, ax.set_yscale):
        axis_scale("symlog", linthresh=threshold)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(ticks, [f"{t:g}" for t in ticks])
        axis.set_minor_locator(NullLocator())
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("robust z, sustained FLOP/s (← slow; symmetric log scale)")
    ax.set_ylabel("robust z, energy per FLOP (hungry ↑)")
    ax.set_title(f"Outliers within cohorts (|z| ≥ {threshold:g})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


#: (key, title) of each report figure, in report order.
FIGURES: tuple[tuple[str, str], ...] = (
    ("efficiency_by_sku", "Delivered fraction of the spec peak by SKU"),
    ("power_vs_flops", "Power against delivered FLOP/s"),
    ("energy_vs_physics", "Measured against physics energy per FLOP"),
    ("outlier_scores", "Outlier scores within cohorts"),
)


def report_figures(
    gpus: pd.DataFrame, *, threshold: float = OUTLIER_Z, dpi: int = 100
) -> dict[str, bytes]:
    """Every report figure rendered to PNG bytes, keyed as in :data:`FIGURES`."""
    builders = {
        "efficiency_by_sku": lambda: plot_efficiency_by_sku(gpus),
        "power_vs_flops": lambda: plot_power_vs_flops(gpus),
        "energy_vs_physics": lambda: plot_energy_vs_physics(gpus),
        "outlier_scores": lambda: plot_outlier_scores(gpus, threshold),
    }
    return {key: figure_png_bytes(builders[key](), dpi=dpi) for key, _ in FIGURES}
