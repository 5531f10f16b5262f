"""``flopwatt tdp``: the seed's physics estimator and the physics-vs-spec registry comparison."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from flopwatt.analysis import plots
from flopwatt.analysis.physics import (
    CIRCUIT_DEFAULT_CLOCK_GHZ,
    CIRCUIT_MULTIPLIER,
    MODELLED_PRECISIONS,
    OPS_PER_ALU_PER_CYCLE,
    PRECISION_ENERGY_SCALE,
    PRECISION_INVARIANCE_NOTE,
    PROCESS_BASE_ENERGY_PJ,
    Circuit,
    TdpEstimate,
    estimate_tdp,
)
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import UnknownSkuError, load_registry
from flopwatt.analysis.tdp_compare import (
    ComparisonRow,
    InverseRow,
    PrecisionDetail,
    Profile,
    compare,
    inverse_view,
    precision_details,
    profile_inputs,
)
from flopwatt.commands.output import (
    emit_json,
    fmt,
    parse_csv_option,
    stdout_console,
)


@click.group()
def tdp() -> None:
    """Physics TDP model (the seed's estimator) and its comparison with spec-sheet TDPs."""


# --- estimate ---------------------------------------------------------------------------------


def _circuit(_ctx: click.Context, _param: click.Parameter, value: str) -> Circuit:
    try:
        return Circuit.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _modelled_precision(_ctx: click.Context, _param: click.Parameter, value: str) -> Precision:
    try:
        precision = Precision.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if precision not in MODELLED_PRECISIONS:
        raise click.BadParameter(
            f"the physics model has no constant for {precision.display}; "
            f"accepted: {', '.join(p.value for p in MODELLED_PRECISIONS)}"
        )
    return precision


def _estimate_table(title: str, rows: Sequence[TdpEstimate], note: str | None = None) -> Table:
    table = Table(title=title, caption=note, caption_justify="left")
    for name in (
        "ALUs",
        "node (nm)",
        "circuit",
        "precision",
        "clock (GHz)",
        "pJ/op",
        "TOPS",
        "TDP (W)",
        "TOPS/W",
    ):
        table.add_column(name, justify="left" if name in ("circuit", "precision") else "right")
    for e in rows:
        table.add_row(
            f"{e.alus:,}",
            f"{e.process_nm:g}",
            e.circuit.value,
            e.precision.display,
            f"{e.frequency_ghz:g}",
            f"{e.energy_per_op_pj:.4g}",
            f"{e.tops:.4g}",
            f"{e.tdp_w:.2f}",
            f"{e.tops_per_w:.3g}",
        )
    return table


def _estimate_json(e: TdpEstimate) -> dict[str, Any]:
    return {
        "alus": e.alus,
        "process_nm": e.process_nm,
        "circuit": e.circuit.value,
        "precision": e.precision.value,
        "frequency_ghz": e.frequency_ghz,
        "base_energy_pj": e.base_energy_pj,
        "energy_per_op_pj": e.energy_per_op_pj,
        "ops_per_second": e.ops_per_second,
        "tops": e.tops,
        "tdp_w": e.tdp_w,
        "tops_per_w": e.tops_per_w,
    }


def _write_plot(fig_builder: Callable[[], Any], path: Path) -> Path:
    fig = fig_builder()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(plots.figure_png_bytes(fig))
    return path


def _plot_path(output: Path | None, mode: str, n_modes: int) -> Path:
    if output is None:
        return Path(f"tdp_{mode}.png")
    if n_modes == 1:
        return output
    return output.with_name(f"{output.stem}_{mode}{output.suffix or '.png'}")


@tdp.command("estimate")
@click.option(
    "--alus",
    type=click.IntRange(min=1),
    default=16_384,
    show_default=True,
    help="Number of arithmetic units.",
)
@click.option(
    "--process",
    "process_nm",
    type=click.FloatRange(min=0, min_open=True),
    default=5,
    show_default=True,
    help="Process node in nm (interpolated between table nodes).",
)
@click.option(
    "--circuit",
    default="tensor_core",
    show_default=True,
    callback=_circuit,
    help="Circuit style (see --list-circuits).",
)
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    callback=_modelled_precision,
    help="Precision, case-insensitive (see --list-precisions).",
)
@click.option(
    "--frequency",
    "frequency_ghz",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Clock in GHz; honoured in every mode. Default: the circuit's.",
)
@click.option(
    "--sweep-alus",
    nargs=2,
    type=click.IntRange(min=1),
    default=None,
    metavar="MIN MAX",
    help="Sweep ALU count from MIN to MAX (log-spaced).",
)
@click.option(
    "--num-points",
    type=click.IntRange(min=2),
    default=12,
    show_default=True,
    help="Points in --sweep-alus.",
)
@click.option(
    "--compare-process",
    "--compare-processes",
    "compare_process",
    is_flag=True,
    help="Compare every process node in the table.",
)
@click.option("--compare-circuits", is_flag=True, help="Compare every circuit style.")
@click.option("--compare-precisions", is_flag=True, help="Compare every modelled precision.")
@click.option("--full-matrix", is_flag=True, help="TDP for every process × circuit pair.")
@click.option("--plot", is_flag=True, help="Save a PNG plot for the chosen mode(s).")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG path for --plot (several modes: suffixed with the mode).",
)
@click.option("--list-circuits", is_flag=True, help="List circuit styles and exit.")
@click.option(
    "--list-process",
    "--list-processes",
    "list_process",
    is_flag=True,
    help="List process nodes and exit.",
)
@click.option("--list-precisions", is_flag=True, help="List precisions and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def estimate(
    alus: int,
    process_nm: float,
    circuit: Circuit,
    precision: Precision,
    frequency_ghz: float | None,
    sweep_alus: tuple[int, int] | None,
    num_points: int,
    compare_process: bool,
    compare_circuits: bool,
    compare_precisions: bool,
    full_matrix: bool,
    plot: bool,
    output: Path | None,
    list_circuits: bool,
    list_process: bool,
    list_precisions: bool,
    as_json: bool,
) -> None:
    """Estimate the power to run ALUS units flat out: E_op × ALUs × ops/cycle × f.

    E_op = base(process) × circuit multiplier × precision scale (the seed's tables).
    """
    if list_circuits or list_process or list_precisions:
        _print_lists(list_circuits, list_process, list_precisions, as_json)
        return

    def est(**overrides: Any) -> TdpEstimate:
        args: dict[str, Any] = {
            "alus": alus,
            "process_nm": process_nm,
            "circuit": circuit,
            "precision": precision,
            "frequency_ghz": frequency_ghz,
        }
        args.update(overrides)
        return estimate_tdp(**args)

    base = est()
    result: dict[str, Any] = _estimate_json(base)
    tables: list[Table] = [_estimate_table("TDP estimate", [base])]
    plot_jobs: list[tuple[str, Callable[[], Any]]] = []

    if sweep_alus is not None:
        lo, hi = sorted(sweep_alus)
        counts = sorted({round(x) for x in np.geomspace(lo, hi, num_points)})
        sweep = [est(alus=n) for n in counts]
        result["sweep"] = [_estimate_json(e) for e in sweep]
        tables.append(_estimate_table(f"ALU sweep {lo:,}–{hi:,}", sweep))
        plot_jobs.append(("sweep", lambda: plots.plot_alu_sweep(sweep)))
    if compare_process:
        by_node = [est(process_nm=n) for n in sorted(PROCESS_BASE_ENERGY_PJ)]
        result["compare_process"] = [_estimate_json(e) for e in by_node]
        tables.append(_estimate_table("By process node", by_node))
        plot_jobs.append(("process", lambda: plots.plot_by_process(by_node)))
    if compare_circuits:
        by_circuit = [est(circuit=c) for c in Circuit]
        result["compare_circuits"] = [_estimate_json(e) for e in by_circuit]
        clock_note = (
            f"every circuit at {frequency_ghz:g} GHz (--frequency)"
            if frequency_ghz
            else "each circuit at its own default clock; pass --frequency to hold it fixed"
        )
        tables.append(_estimate_table("By circuit", by_circuit, clock_note))
        plot_jobs.append(("circuits", lambda: plots.plot_by_circuit(by_circuit)))
        plot_jobs.append(("efficiency", lambda: plots.plot_efficiency_bars(by_circuit)))
    if compare_precisions:
        by_precision = [est(precision=p) for p in MODELLED_PRECISIONS]
        result["compare_precisions"] = [_estimate_json(e) for e in by_precision]
        tables.append(_estimate_table("By precision", by_precision, PRECISION_INVARIANCE_NOTE))
        plot_jobs.append(("precisions", lambda: plots.plot_by_precision(by_precision)))
    if full_matrix:
        matrix = [
            est(process_nm=n, circuit=c) for n in sorted(PROCESS_BASE_ENERGY_PJ) for c in Circuit
        ]
        result["full_matrix"] = [_estimate_json(e) for e in matrix]
        tables.append(_matrix_table(matrix, precision, frequency_ghz))
    if not plot_jobs:
        by_circuit_for_plot = [est(circuit=c) for c in Circuit]
        plot_jobs.append(("efficiency", lambda: plots.plot_efficiency_bars(by_circuit_for_plot)))

    result["note"] = PRECISION_INVARIANCE_NOTE
    written: list[str] = []
    if plot:
        for mode, builder in plot_jobs:
            written.append(str(_write_plot(builder, _plot_path(output, mode, len(plot_jobs)))))
        result["plots"] = written

    if as_json:
        emit_json(result)
        return
    console = stdout_console()
    for table in tables:
        console.print(table)
    console.print(f"[dim]{PRECISION_INVARIANCE_NOTE}[/dim]")
    for path in written:
        console.print(f"plot written: {path}")


def _matrix_table(
    matrix: Sequence[TdpEstimate], precision: Precision, frequency_ghz: float | None
) -> Table:
    clock = f"{frequency_ghz:g} GHz" if frequency_ghz else "each circuit's default clock"
    table = Table(title=f"TDP (W) by process × circuit — {precision.display}, {clock}")
    table.add_column("node (nm)", justify="right")
    for c in Circuit:
        table.add_column(c.value, justify="right")
    for node in sorted(PROCESS_BASE_ENERGY_PJ):
        cells = [f"{e.tdp_w:.1f}" for e in matrix if e.process_nm == node]
        table.add_row(f"{node:g}", *cells)
    return table


def _print_lists(circuits: bool, processes: bool, precisions: bool, as_json: bool) -> None:
    data: dict[str, Any] = {}
    if circuits:
        data["circuits"] = [
            {
                "circuit": c.value,
                "multiplier": CIRCUIT_MULTIPLIER[c],
                "default_clock_ghz": CIRCUIT_DEFAULT_CLOCK_GHZ[c],
            }
            for c in Circuit
        ]
    if processes:
        data["processes"] = [
            {"process_nm": n, "base_energy_pj": e}
            for n, e in sorted(PROCESS_BASE_ENERGY_PJ.items())
        ]
    if precisions:
        data["precisions"] = [
            {
                "precision": p.value,
                "energy_scale": PRECISION_ENERGY_SCALE[p],
                "ops_per_alu_per_cycle": OPS_PER_ALU_PER_CYCLE[p],
            }
            for p in MODELLED_PRECISIONS
        ]
    if as_json:
        emit_json(data)
        return
    console = stdout_console()
    for name, rows in data.items():
        table = Table(title=name)
        for key in rows[0]:
            table.add_column(key, justify="left" if isinstance(rows[0][key], str) else "right")
        for row in rows:
            table.add_row(*(f"{v:g}" if isinstance(v, float) else str(v) for v in row.values()))
        console.print(table)


# --- registry ---------------------------------------------------------------------------------


def _comparison_table(rows: Sequence[ComparisonRow], profile: Profile) -> Table:
    caption = (
        "CUDA = CUDA-core FP32 at the vector peak; TC = tensor-core FP16 at the dense peak; "
        "combined = 0.2 × CUDA + TC; *** = tensor cores alone exceed the spec TDP"
    )
    if profile is Profile.SEED:
        caption += "\nseed inputs kept verbatim for comparability (B100 at 3 nm, H100 at "
        caption += "256 MAC/TC/clk and 1.98 GHz, A100 13,824 CUDA cores, full-rate FP64)"
    table = Table(
        title=f"Physics vs spec TDP — {profile.value} profile",
        caption=caption,
        caption_justify="left",
    )
    for name in (
        "GPU",
        "spec TDP (W)",
        "CUDA FP32 (W)",
        "TC FP16 (W)",
        "combined (W)",
        "est/spec",
        "MAC/TC/clk",
        "TC clock (MHz)",
        "node (nm)",
        "notes",
    ):
        table.add_column(name, justify="left" if name == "GPU" else "right")
    footnotes: dict[str, int] = {}
    for r in rows:
        marks = []
        for flag in r.flags if profile is Profile.SPEC else ():
            marks.append(str(footnotes.setdefault(flag, len(footnotes) + 1)))
        table.add_row(
            r.sku,
            fmt(r.spec_tdp_w, ".0f"),
            fmt(r.cuda_fp32_w),
            fmt(r.tc_fp16_w),
            fmt(r.combined_w),
            fmt(r.ratio, ".2f", "x") + (" ***" if r.over_budget else ""),
            fmt(r.tc_macs_per_clk, ".0f"),
            fmt(r.tc_clock_mhz, ".0f"),
            fmt(r.process_nm, "g"),
            ",".join(marks),
        )
    if footnotes:
        table.caption = (table.caption or "") + "".join(
            f"\n[{n}] {flag}" for flag, n in footnotes.items()
        )
    return table


def _sensitivity_table(rows: Sequence[ComparisonRow]) -> Table:
    table = Table(
        title="Sensitivity: at what pJ/MAC would tensor-core FP16 work exhaust the TDP?",
        caption="margin = spec TDP ÷ TC FP16 W; below 1.00 the peak cannot be sustained at TDP",
        caption_justify="left",
    )
    for name in ("GPU", "model pJ/MAC", "max pJ/MAC", "margin", "verdict"):
        table.add_column(name, justify="left" if name in ("GPU", "verdict") else "right")
    for r in rows:
        verdict = "—" if r.margin is None else ("OVER budget" if r.over_budget else "fits")
        table.add_row(
            r.sku,
            fmt(r.tc_pj_per_mac, ".3f"),
            fmt(r.max_pj_per_mac, ".3f"),
            fmt(r.margin, ".2f", "x"),
            verdict,
        )
    return table


def _detail_inverse_table(
    details: Sequence[PrecisionDetail], inverse: Sequence[InverseRow]
) -> Table:
    table = Table(
        title="Per-precision detail and inverse view (each datapath at its dense peak)",
        caption="ceiling = TDP ÷ peak MAC/s: the all-in energy per MAC (arithmetic, memory, "
        "leakage, I/O) needed to hold the spec peak within TDP.\nmodel ÷ ceiling = modelled "
        "power ÷ TDP; above 1 the model's arithmetic alone cannot hold the peak at TDP.",
        caption_justify="left",
    )
    for name in (
        "GPU",
        "precision",
        "units",
        "peak TFLOP/s",
        "model pJ/MAC",
        "model W",
        "ceiling pJ/MAC",
        "ceiling pJ/FLOP",
        "model ÷ ceiling",
    ):
        table.add_column(name, justify="left" if name in ("GPU", "precision", "units") else "right")
    ceilings = {(r.sku, r.precision, r.datapath): r for r in inverse}
    for d in details:
        inv = ceilings.get((d.sku, d.precision, d.datapath))
        ratio = inv.model_over_ceiling if inv else None
        table.add_row(
            d.sku,
            d.precision.display,
            d.datapath.value,
            fmt(d.peak_flops_per_s / 1e12, ".4g"),
            fmt(d.model_pj_per_mac, ".3f"),
            fmt(d.power_w),
            fmt(inv.ceiling_pj_per_mac if inv else None, ".3f"),
            fmt(inv.ceiling_pj_per_flop if inv else None, ".3f"),
            fmt(ratio, ".2f") + (" ***" if ratio is not None and ratio > 1 else ""),
        )
    return table


def _row_json(r: ComparisonRow) -> dict[str, Any]:
    return {
        "sku": r.sku,
        "spec_tdp_w": r.spec_tdp_w,
        "cuda_fp32_w": r.cuda_fp32_w,
        "tc_fp16_w": r.tc_fp16_w,
        "combined_w": r.combined_w,
        "ratio": r.ratio,
        "tc_pj_per_mac": r.tc_pj_per_mac,
        "max_pj_per_mac": r.max_pj_per_mac,
        "margin": r.margin,
        "over_budget": r.over_budget,
        "tc_macs_per_clk": r.tc_macs_per_clk,
        "tc_clock_mhz": r.tc_clock_mhz,
        "process_nm": r.process_nm,
        "flags": list(r.flags),
    }


@tdp.command("registry")
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice([p.value for p in Profile], case_sensitive=False),
    default=Profile.SPEC.value,
    show_default=True,
    help="seed: the seed's inputs (its published table); spec: the sourced registry.",
)
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    help="Limit the detail and inverse tables to these precisions (comma list).",
)
@click.option("--sku", "skus", multiple=True, help="Limit to these SKUs (comma list).")
@click.option("--plot", is_flag=True, help="Save a PNG of modelled ÷ spec TDP per SKU.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("tdp_registry.png"),
    show_default=True,
    help="PNG path for --plot.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def registry_cmd(
    profile_name: str,
    precisions: tuple[str, ...],
    skus: tuple[str, ...],
    plot: bool,
    output: Path,
    as_json: bool,
) -> None:
    """Compare physics-based TDP with spec-sheet TDP per GPU, with sensitivity, per-precision
    detail and the inverse view (energy per MAC a chip must reach to hold its peak at TDP)."""
    profile = Profile.parse(profile_name)
    try:
        wanted_precisions = [Precision.parse(p) for p in parse_csv_option(precisions)] or None
        registry = load_registry() if profile is Profile.SPEC else None
        chips = profile_inputs(profile, registry, parse_csv_option(skus) or None)
    except (ValueError, UnknownSkuError, KeyError) as exc:
        raise click.BadParameter(str(exc).strip("'\"")) from None
    rows = [compare(c) for c in chips]
    details = [d for c in chips for d in precision_details(c, wanted_precisions)]
    inverse = [r for c in chips for r in inverse_view(c, wanted_precisions)]
    written = None
    if plot:
        written = _write_plot(lambda: plots.plot_registry_ratio(rows, profile.value), output)
    if as_json:
        emit_json(
            {
                "profile": profile.value,
                "rows": [_row_json(r) for r in rows],
                "precision_detail": details,
                "inverse_view": inverse,
                "note": PRECISION_INVARIANCE_NOTE,
                "plot": str(written) if written else None,
            }
        )
        return
    console = stdout_console()
    console.print(_comparison_table(rows, profile))
    console.print(_sensitivity_table(rows))
    console.print(_detail_inverse_table(details, inverse))
    console.print(f"[dim]{PRECISION_INVARIANCE_NOTE}[/dim]")
    if written:
        console.print(f"plot written: {written}")
