"""Matplotlib figures for the physics model. Each function builds and returns a Figure; writing
it anywhere is the caller's business (:func:`figure_png_bytes` renders one to PNG bytes).

matplotlib is imported inside the functions (Agg backend, no display), so importing this module
costs nothing and ``analysis`` stays importable where matplotlib is absent.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from flopwatt.analysis.physics import TdpEstimate
from flopwatt.analysis.tdp_compare import ComparisonRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(width: float = 8.0, height: float = 5.0) -> Figure:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def figure_png_bytes(fig: Figure, dpi: int = 120) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _config_label(e: TdpEstimate) -> str:
    return f"{e.circuit.value}, {e.precision.display}, {e.process_nm:g} nm, {e.frequency_ghz:g} GHz"


def plot_alu_sweep(points: Sequence[TdpEstimate]) -> Figure:
    """Log-log TDP (W) against ALU count, with reference lines at common board powers."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.loglog([p.alus for p in points], [p.tdp_w for p in points], marker="o", label="modelled")
    for watts in (75, 300, 700):
        ax.axhline(watts, linestyle=":", linewidth=1, color="grey")
        ax.annotate(f"{watts} W", (points[0].alus, watts), fontsize=8, color="grey")
    ax.set_xlabel("ALUs")
    ax.set_ylabel("TDP (W)")
    ax.set_title(f"TDP vs ALU count — {_config_label(points[0])}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def plot_by_process(points: Sequence[TdpEstimate]) -> Figure:
    """TDP (W) and energy per op (pJ) against process node (nm)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    nodes = [p.process_nm for p in points]
    ax.plot(nodes, [p.tdp_w for p in points], marker="o", color="tab:red", label="TDP (W)")
    ax.set_xlabel("process node (nm)")
    ax.set_ylabel("TDP (W)", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(
        nodes,
        [p.energy_per_op_pj for p in points],
        marker="s",
        linestyle="--",
        color="tab:blue",
        label="energy per op (pJ)",
    )
    ax2.set_ylabel("energy per op (pJ)", color="tab:blue")
    p0 = points[0]
    ax.set_title(f"TDP vs process — {p0.alus:,} ALUs, {p0.circuit.value}, {p0.precision.display}")
    ax.grid(True, alpha=0.3)
    return fig


def _bars(
    labels: Sequence[str], values: Sequence[float], ylabel: str, title: str, color: str
) -> Figure:
    fig = _new_figure(max(8.0, 0.55 * len(labels)), 5.0)
    ax = fig.add_subplot()
    bars = ax.bar(labels, values, color=color)
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_by_circuit(points: Sequence[TdpEstimate]) -> Figure:
    """TDP (W) per circuit style at one ALU count, node and precision."""
    p0 = points[0]
    return _bars(
        [p.circuit.value for p in points],
        [p.tdp_w for p in points],
        "TDP (W)",
        f"TDP by circuit — {p0.alus:,} ALUs, {p0.precision.display}, {p0.process_nm:g} nm",
        "tab:orange",
    )


def plot_by_precision(points: Sequence[TdpEstimate]) -> Figure:
    """TDP (W) and throughput (TOPS) per precision; flat watts are a property of the model."""
    fig = _new_figure(9, 5)
    ax = fig.add_subplot(1, 2, 1)
    labels = [p.precision.display for p in points]
    ax.bar(labels, [p.tdp_w for p in points], color="tab:red")
    ax.set_ylabel("TDP (W)")
    ax.set_title("TDP by precision")
    ax.tick_params(axis="x", rotation=45)
    ax2 = fig.add_subplot(1, 2, 2)
    ax2.bar(labels, [p.tops for p in points], color="tab:green")
    ax2.set_yscale("log")
    ax2.set_ylabel("TOPS")
    ax2.set_title("Throughput by precision")
    ax2.tick_params(axis="x", rotation=45)
    fig.suptitle("Equal watts across precisions are a property of the model's tables", fontsize=9)
    return fig


def plot_efficiency_bars(points: Sequence[TdpEstimate]) -> Figure:
    """Energy efficiency (TOPS/W) per configuration, labelled by circuit."""
    p0 = points[0]
    return _bars(
        [p.circuit.value for p in points],
        [p.tops_per_w for p in points],
        "TOPS/W",
        f"Efficiency by circuit — {p0.precision.display}, {p0.process_nm:g} nm",
        "tab:green",
    )


def plot_registry_ratio(rows: Sequence[ComparisonRow], profile: str) -> Figure:
    """Modelled combined power ÷ spec TDP per SKU; bars above 1 cannot hold their peak at TDP."""
    usable = [r for r in rows if r.ratio is not None]
    fig = _bars(
        [r.sku for r in usable],
        [r.ratio for r in usable if r.ratio is not None],
        "modelled combined W ÷ spec TDP",
        f"Physics vs spec TDP ({profile} profile)",
        "tab:purple",
    )
    fig.axes[0].axhline(1.0, color="black", linewidth=1)
    return fig
