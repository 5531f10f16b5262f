"""The ``flopwatt tdp`` commands as a user runs them: JSON contracts, errors, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flopwatt.cli import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args: str) -> Any:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def run_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


def test_estimate_json_contract() -> None:
    out = run_json(
        "tdp",
        "estimate",
        "--alus",
        "10000",
        "--process",
        "4",
        "--precision",
        "FP16",
        "--circuit",
        "tensor_core",
        "--frequency",
        "1.5",
    )
    for key in ("tdp_w", "energy_per_op_pj", "tops", "tops_per_w", "ops_per_second"):
        assert isinstance(out[key], float), key
    assert out["tdp_w"] == pytest.approx(33.15)
    assert out["energy_per_op_pj"] == pytest.approx(0.5525)
    assert out["tops"] == pytest.approx(60)
    assert "precision" in out["note"].lower()


def test_estimate_frequency_is_honoured_in_every_mode() -> None:
    out = run_json(
        "tdp",
        "estimate",
        "--frequency",
        "2.0",
        "--compare-circuits",
        "--compare-process",
        "--compare-precisions",
        "--full-matrix",
        "--sweep-alus",
        "100",
        "10000",
        "--num-points",
        "5",
    )
    for mode in (
        "compare_circuits",
        "compare_process",
        "compare_precisions",
        "full_matrix",
        "sweep",
    ):
        assert out[mode], mode
        assert {row["frequency_ghz"] for row in out[mode]} == {2.0}, mode
    assert out["sweep"][0]["alus"] == 100
    assert out["sweep"][-1]["alus"] == 10000
    assert len(out["full_matrix"]) == 12 * 10


def test_compare_circuits_without_frequency_uses_each_circuits_clock() -> None:
    out = run_json("tdp", "estimate", "--compare-circuits")
    clocks = {r["circuit"]: r["frequency_ghz"] for r in out["compare_circuits"]}
    assert clocks["x86_performance"] == 4.5 and clocks["systolic_mac"] == 1.0


def test_compare_processes_alias_and_lists() -> None:
    a = run_json("tdp", "estimate", "--compare-processes")
    b = run_json("tdp", "estimate", "--compare-process")
    assert a["compare_process"] == b["compare_process"]
    lists = run_json("tdp", "estimate", "--list-circuits", "--list-process", "--list-precisions")
    assert {c["circuit"] for c in lists["circuits"]} >= {"tensor_core", "x86_performance"}
    assert {p["process_nm"] for p in lists["processes"]} >= {3, 28}
    assert {p["precision"] for p in lists["precisions"]} >= {"fp64", "int2"}


def test_registry_seed_json_contract() -> None:
    out = run_json("tdp", "registry", "--profile", "seed")
    rows = {r["sku"]: r for r in out["rows"]}
    for r in rows.values():
        for key in (
            "sku",
            "spec_tdp_w",
            "cuda_fp32_w",
            "tc_fp16_w",
            "combined_w",
            "ratio",
            "tc_pj_per_mac",
            "margin",
            "tc_macs_per_clk",
            "tc_clock_mhz",
        ):
            assert key in r, key
    t4 = rows["T4-PCIe-16GB"]
    assert (round(t4["tc_fp16_w"], 1), round(t4["ratio"], 2), round(t4["margin"], 2)) == (
        91.2,
        1.36,
        0.77,
    )
    assert out["profile"] == "seed"


def test_registry_spec_default_has_h100_at_720w_and_nulls_for_missing() -> None:
    out = run_json("tdp", "registry", "--sku", "H100-SXM5-80GB,B100", "--precision", "fp16")
    rows = {r["sku"]: r for r in out["rows"]}
    assert out["profile"] == "spec"
    assert round(rows["H100-SXM5-80GB"]["tc_fp16_w"]) == 720
    assert rows["H100-SXM5-80GB"]["tc_macs_per_clk"] == pytest.approx(512, rel=1e-3)
    assert rows["B100"]["cuda_fp32_w"] is None and rows["B100"]["ratio"] is None
    assert {d["precision"] for d in out["precision_detail"]} == {"fp16"}
    assert {r["precision"] for r in out["inverse_view"]} == {"fp16"}


def test_registry_table_output_names_the_over_budget_parts() -> None:
    text = run("tdp", "registry", "--profile", "seed").stdout
    assert "T4-PCIe-16GB" in text and "OVER budget" in text
    assert "Inverse" in text or "inverse" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tdp", "registry", "--sku", "H300"], "accepted"),
        (["tdp", "registry", "--precision", "fp12"], "accepted"),
        (["tdp", "estimate", "--precision", "fp4"], "no constant for FP4"),
        (["tdp", "estimate", "--circuit", "quantum"], "accepted"),
        (["tdp", "estimate", "--alus", "0"], "--alus"),
    ],
)
def test_bad_options_fail_with_a_clear_message(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in result.output


def test_plots_are_written(tmp_path: Path) -> None:
    out = run_json(
        "tdp",
        "estimate",
        "--sweep-alus",
        "1000",
        "100000",
        "--compare-process",
        "--compare-circuits",
        "--compare-precisions",
        "--plot",
        "--output",
        str(tmp_path / "tdp.png"),
    )
    paths = [Path(p) for p in out["plots"]]
    assert {p.name for p in paths} == {
        "tdp_sweep.png",
        "tdp_process.png",
        "tdp_circuits.png",
        "tdp_efficiency.png",
        "tdp_precisions.png",
    }
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, p
    single = tmp_path / "one.png"
    run("tdp", "estimate", "--plot", "--output", str(single))
    assert single.read_bytes().startswith(PNG_MAGIC)
    reg = tmp_path / "reg.png"
    run("tdp", "registry", "--plot", "--output", str(reg))
    assert reg.read_bytes().startswith(PNG_MAGIC)


def test_console_entry_point_runs() -> None:
    """The installed command, in its own process, as the README's quick start runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "flopwatt", "tdp", "registry", "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert len(json.loads(proc.stdout)["rows"]) == 21


def test_readme_metric_table_is_generated_from_the_spec() -> None:
    """The README's metric table is `python -m flopwatt.metrics_spec` output, verbatim."""
    from flopwatt.metrics_spec import markdown_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- metrics:begin -->\n", 1)[1].split("\n<!-- metrics:end -->", 1)[0]
    assert block == markdown_table()
