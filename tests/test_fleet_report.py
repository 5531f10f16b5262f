"""The fleet report end to end on a real SQLite store written with the store's own API (see
``tests/report_fleet.py`` for the fleet): robust z-scores, outliers and limiters, verdicts,
absent values, every output format, the CLI, and ``GET /report`` on a running collector."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pandas.testing import assert_frame_equal

from flopwatt.analysis.registry import Registry
from flopwatt.cli import cli
from flopwatt.report.columns import ReportFormatError
from flopwatt.report.files import FORMATS, as_report, parse_formats, write_report
from flopwatt.report.html import report_from_html
from flopwatt.report.loading import ReportSourceError, load_report_inputs
from flopwatt.report.tables import (
    GPU_COLUMNS,
    SKU_COLUMNS,
    TABLE_NAMES,
    VERDICT_COLUMNS,
    FleetReport,
    ReportInputs,
    ReportParameters,
    build_report,
    robust_z,
    typed_frame,
)
from flopwatt.store.sqlite import SQLiteStore
from tests.collector_helpers import collector, http_get
from tests.report_fleet import NOW, Fleet, S, build_fleet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Fleet:
    return build_fleet(tmp_path_factory.mktemp("fleet") / "fleet.db", registry)


@pytest.fixture(scope="module")
def report(fleet: Fleet) -> FleetReport:
    return as_report(fleet.db_path, now_unix_ns=NOW)


@pytest.fixture(scope="module")
def written(report: FleetReport, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_report(report, tmp_path_factory.mktemp("out"), FORMATS)


def row(df: pd.DataFrame, host: str, index: int) -> dict[str, Any]:
    rows = df[(df["hostname"] == host) & (df["device_index"] == index)].to_dict("records")
    assert len(rows) == 1, rows
    return rows[0]


def missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


# --- robust z ---------------------------------------------------------------------------------


def test_robust_z_by_hand() -> None:
    # median 100; |deviations| 0, 2, 2, 40, 1 → MAD 2; z = 0.6745·(x − 100) / 2
    z = robust_z([100.0, 98.0, 102.0, 60.0, 101.0])
    assert z.tolist() == pytest.approx([0.0, -0.6745, 0.6745, -13.49, 0.33725])


def test_robust_z_floors_mad_at_one_percent_of_the_median() -> None:
    # MAD 0 (four identical GPUs): the scale is 1 % of the median, 1.0 → z = 0.6745·(−50) / 1
    z = robust_z([100.0, 100.0, 100.0, 100.0, 50.0])
    assert z.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0, -33.725])
    # A tiny spread (MAD 0.01 % of the median) is noise: scored against the 1 % floor.
    z = robust_z([100.0, 100.01, 99.99, 100.0, 100.5])
    assert z[-1] == pytest.approx(0.6745 * 0.5 / 1.0)
    assert robust_z([7.0, 7.0, 7.0]).tolist() == [0.0, 0.0, 0.0]  # all equal: no outlier
    # Without the floor, MAD = 0 falls back to the mean absolute deviation (10 here).
    z = robust_z([100.0, 100.0, 100.0, 100.0, 50.0], mad_floor_ratio=0.0)
    assert z[-1] == pytest.approx(-50 / (1.253314 * 10), rel=1e-6)
    assert robust_z([0.0, 0.0, 0.0, 1.0]).tolist() == pytest.approx(
        [-0.0, -0.0, -0.0, 1 / (1.253314 * 0.25)]
    )


def test_robust_z_needs_three_values_and_ignores_absent_ones() -> None:
    assert np.isnan(robust_z([1.0, 2.0])).all()
    assert np.isnan(robust_z([1.0, math.nan, 2.0])).all()
    z = robust_z([1.0, math.nan, 2.0, 4.0])  # median 2, MAD 1
    assert math.isnan(z[1])
    assert [z[0], z[2], z[3]] == pytest.approx([-0.6745, 0.0, 1.349])


def test_fleet_cohort_scores_match_the_hand_computation(report: FleetReport) -> None:
    # H100 BF16 (sim): sustained ÷ peak 0.70, 0.71, 0.69, 0.705, 0.35 → median 0.70, MAD 0.01.
    h100 = report.gpus[report.gpus["hostname"] == "h100-sim"].sort_values("device_index")
    assert h100["sustained_robust_z"].tolist() == pytest.approx(
        [0.0, 0.6745, -0.6745, 0.33725, -23.6075], rel=1e-9
    )
    assert h100["cohort_size"].tolist() == [5] * 5
    assert set(h100["cohort"]) == {"H100-SXM5-80GB · driver sim · bf16 · sim"}


def _tiny_inputs(ratios: list[float]) -> ReportInputs:
    devices = pd.DataFrame(
        [
            {"device_uuid": f"G{i}", "hostname": "n", "device_index": i, "name": "x",
             "kind": "gpu", "sku": "X", "simulated": False, "throttle_reasons_capable": True}
            for i in range(len(ratios))
        ]
    )  # fmt: skip
    results = pd.DataFrame(
        [
            {"device_uuid": f"G{i}", "job_id": "j", "kind": "gemm", "precision": "fp16",
             "finished_unix_ns": NOW, "sustained_flops_per_s": r * 1e14,
             "spec_peak_flops_per_s": 1e14, "throttle_reasons_seen": 0}
            for i, r in enumerate(ratios)
        ]
    )  # fmt: skip
    return ReportInputs(devices, results, pd.DataFrame({"device_uuid": []}))


def test_a_tiny_difference_in_a_tight_cohort_is_not_an_outlier() -> None:
    # MAD 0.001 is under the floor (1 % of 0.9995): z(0.98) = 0.6745·(−0.0195) / 0.009995.
    inputs = _tiny_inputs([1.000, 1.001, 0.999, 0.98])
    default = build_report(inputs, now_unix_ns=NOW).gpus
    assert default["sustained_robust_z"].iloc[3] == pytest.approx(-1.316, rel=1e-3)
    assert default["outlier"].tolist() == [False] * 4
    # The textbook statistic (no floor) would flag it at z = −13.2.
    textbook = build_report(
        inputs, now_unix_ns=NOW, parameters=ReportParameters(mad_floor_ratio=0.0)
    ).gpus
    assert textbook["sustained_robust_z"].iloc[3] == pytest.approx(-13.153, rel=1e-3)
    assert textbook["outlier"].tolist() == [False, False, False, True]
    assert textbook["outlier_kind"].iloc[3] == "slow"


def test_one_slow_gpu_among_three_identical_ones_is_flagged() -> None:
    # MAD = 0; the 1 % floor makes 20 % slow a clear outlier even in a cohort of four.
    gpus = build_report(_tiny_inputs([0.8, 0.8, 0.8, 0.64]), now_unix_ns=NOW).gpus
    assert gpus["outlier"].tolist() == [False, False, False, True]
    assert gpus["sustained_robust_z"].iloc[3] == pytest.approx(0.6745 * -0.16 / 0.008)


# --- the fleet's tables -----------------------------------------------------------------------


def test_slow_gpu_is_flagged_and_ranked_first(report: FleetReport) -> None:
    slow = row(report.gpus, "h100-sim", 4)
    assert slow["outlier"] is True
    assert slow["outlier_kind"] == "slow, hungry"
    assert slow["cohort_rank"] == 1
    assert slow["sustained_over_cohort_ratio"] == pytest.approx(0.5)
    assert slow["source"] == "sim"
    for i in range(4):
        assert row(report.gpus, "h100-sim", i)["outlier"] is False
    out = report.outliers
    assert list(zip(out["hostname"], out["device_index"], strict=True)) == [
        ("h100-sim", 4),
        ("a100-hw", 2),
    ]


def test_limiters_come_from_recorded_throttle_reasons(report: FleetReport) -> None:
    capped = row(report.gpus, "a100-hw", 2)
    assert capped["limiter"] == "power cap"
    assert capped["throttle_reasons"] == "sw_power_cap"
    assert capped["outlier_kind"] == "slow"
    assert report.outliers.iloc[1]["limiter"] == "power cap"
    assert row(report.gpus, "v100-sim", 1)["limiter"] == "thermal"
    assert row(report.gpus, "a100-hw", 0)["limiter"] == "none"
    # The CPU cannot report clock-event reasons: no limiter rather than "none".
    assert row(report.gpus, "local", 0)["limiter"] is None


def test_latest_result_wins(report: FleetReport) -> None:
    first = row(report.gpus, "h100-sim", 0)
    assert first["sustained_over_spec_ratio"] == pytest.approx(0.70)
    assert first["job_id"] == "gemm-1"
    assert len(report.gpus) == 16  # 15 measured devices + one never measured


def test_absent_values_stay_absent(report: FleetReport) -> None:
    no_energy = row(report.gpus, "a100-hw", 3)
    for col in (
        "measured_energy_per_flop_j",
        "mean_power_w",
        "energy_robust_z",
        "mean_power_over_tdp_ratio",
    ):
        assert missing(no_energy[col]), col
    assert no_energy["sustained_robust_z"] == pytest.approx(1.01175)
    cpu = row(report.gpus, "local", 0)
    assert cpu["sku"] is None and cpu["source"] == "hardware"
    for col in ("spec_peak_flops_per_s", "sustained_over_spec_ratio", "power_limit_w",
                "physics_energy_per_flop_j", "sustained_robust_z"):  # fmt: skip
        assert missing(cpu[col]), col
    assert cpu["sustained_flops_per_s"] == pytest.approx(1.2e12)
    never = row(report.gpus, "new-node", 0)
    assert never["precision"] is None and missing(never["sustained_flops_per_s"])
    assert missing(never["outlier"]) and never["cohort"] is None
    # Two T4s are too few to score: not assessed, not "not an outlier".
    t4 = row(report.gpus, "t4-sim", 0)
    assert missing(t4["sustained_robust_z"]) and missing(t4["outlier"])
    assert (report.gpus["measured_energy_per_flop_j"] != 0).all()


def test_model_efficiency_and_model_table(report: FleetReport) -> None:
    assert row(report.gpus, "h100-sim", 0)["model_efficiency_ratio"] == pytest.approx(0.45)
    assert row(report.gpus, "h100-sim", 1)["model_efficiency_ratio"] == pytest.approx(0.47)
    assert row(report.gpus, "h100-sim", 1)["model_results"] == 1
    assert missing(row(report.gpus, "h100-sim", 2)["model_efficiency_ratio"])
    models = report.models
    assert models["model"].tolist() == ["resnet50", "resnet50"]
    assert set(models["source"]) == {"sim"}
    assert models["energy_per_inference_j"].tolist() == [0.5, 0.5]


def test_last_seen_takes_the_newest_evidence(report: FleetReport) -> None:
    with_telemetry = row(report.gpus, "h100-sim", 0)
    assert with_telemetry["last_seen_unix_ns"] == NOW - 1 * S
    assert with_telemetry["last_seen_age_s"] == pytest.approx(1.0)
    assert with_telemetry["last_power_w"] == pytest.approx(612.5)
    assert with_telemetry["last_temperature_c"] == pytest.approx(62.0)
    assert row(report.gpus, "h100-sim", 1)["last_seen_unix_ns"] == NOW - 100 * S  # model run
    assert row(report.gpus, "new-node", 0)["last_seen_unix_ns"] == NOW - 3600 * S  # registered
    assert row(report.gpus, "a100-hw", 0)["last_seen_utc"] == "2027-01-15T07:58:00Z"


def test_verdicts(report: FleetReport, fleet: Fleet) -> None:
    v = {(r["sku"], r["source"]): r for r in report.verdicts.to_dict("records")}
    assert set(v) == {
        ("H100-SXM5-80GB", "sim"),
        ("A100-SXM4-80GB", "hardware"),
        ("V100-SXM2-32GB", "sim"),
        ("T4", "sim"),
    }  # the CPU has no spec peak, so no verdict
    h100 = v[("H100-SXM5-80GB", "sim")]
    assert h100["sustained_over_spec_median_ratio"] == pytest.approx(0.70)
    assert h100["spec_peak_flops_per_s"] == fleet.peaks[("H100-SXM5-80GB", "bf16")]
    # measured ÷ (limit ÷ peak) = P / (ratio · limit) per GPU; median of the five:
    per_gpu = [650 / (0.70 * 700), 655 / (0.71 * 700), 645 / (0.69 * 700),
               652 / (0.705 * 700), 600 / (0.35 * 700)]  # fmt: skip
    assert h100["measured_over_ceiling_at_limit_median_ratio"] == pytest.approx(
        float(np.median(per_gpu))
    )
    assert h100["feedable_at_limit_over_spec_ratio"] == pytest.approx(1 / np.median(per_gpu))
    assert (h100["verdict"], h100["spec_reached"], h100["spec_within_limit"]) == (
        "power-limited",
        False,
        False,
    )
    a100 = v[("A100-SXM4-80GB", "hardware")]
    assert a100["sustained_over_spec_median_ratio"] == pytest.approx(0.795)
    assert (a100["gpus"], a100["gpus_measured"], a100["power_bound_gpus"]) == (4, 4, 3)
    assert a100["verdict"] == "power-limited"
    assert v[("V100-SXM2-32GB", "sim")]["verdict"] == "reached"
    t4 = v[("T4", "sim")]
    assert t4["sustained_over_spec_median_ratio"] == pytest.approx(0.61)
    assert (t4["verdict"], t4["spec_within_limit"]) == ("not power-limited", True)
    assert list(report.verdicts.columns) == list(VERDICT_COLUMNS)


def test_sku_summary(report: FleetReport) -> None:
    skus = report.skus
    assert list(skus.columns) == list(SKU_COLUMNS)
    h100 = skus[skus["sku"] == "H100-SXM5-80GB"].iloc[0]
    assert (h100["gpus"], h100["outliers"], h100["source"]) == (5, 1, "sim")
    assert h100["sustained_over_spec_median_ratio"] == pytest.approx(0.70)
    assert h100["sustained_over_spec_mad_ratio"] == pytest.approx(0.01)
    assert h100["sustained_over_spec_min_ratio"] == pytest.approx(0.35)
    assert h100["sustained_over_spec_max_ratio"] == pytest.approx(0.71)
    cpu = skus[skus["unmatched_name"] == "Intel Xeon Local CPU"].iloc[0]
    assert cpu["sku"] is None and missing(cpu["sustained_over_spec_median_ratio"])
    assert cpu["sustained_median_flops_per_s"] == pytest.approx(1.2e12)


def test_simulated_devices_are_marked_everywhere(report: FleetReport) -> None:
    by_host = report.gpus.groupby("hostname")["source"].agg(set).to_dict()
    assert by_host == {
        "h100-sim": {"sim"},
        "v100-sim": {"sim"},
        "t4-sim": {"sim"},
        "a100-hw": {"hardware"},
        "local": {"hardware"},
        "new-node": {"hardware"},
    }
    for name in ("skus", "outliers", "verdicts", "models"):
        assert report.tables()[name]["source"].notna().all(), name


# --- formats ----------------------------------------------------------------------------------


def test_every_format_is_written_and_parses(written: list[Path], report: FleetReport) -> None:
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["report.html", "report.md", "report.json"]
        + [f"report{s}.{ext}" for ext in ("csv", "parquet")
           for s in ("", "-skus", "-outliers", "-verdicts", "-models", "-window", "-suspects",
                         "-jobs")]
    )  # fmt: skip
    out = written[0].parent

    csv = pd.read_csv(out / "report.csv")
    assert list(csv.columns) == list(GPU_COLUMNS)
    assert {"V100-SXM2-32GB", "A100-SXM4-80GB", "H100-SXM5-80GB", "T4"} <= set(csv["sku"])
    assert "CPU-local-0" in set(csv["device_uuid"])
    slow = csv[(csv["hostname"] == "h100-sim") & (csv["device_index"] == 4)].iloc[0]
    assert bool(slow["outlier"]) and slow["source"] == "sim"
    capped = csv[(csv["hostname"] == "a100-hw") & (csv["device_index"] == 2)].iloc[0]
    assert capped["limiter"] == "power cap"
    no_energy = csv[(csv["hostname"] == "a100-hw") & (csv["device_index"] == 3)].iloc[0]
    assert math.isnan(no_energy["measured_energy_per_flop_j"])  # an empty cell, not 0
    assert pd.read_csv(out / "report-verdicts.csv")["verdict"].notna().all()

    for name in TABLE_NAMES:
        suffix = "" if name == "gpus" else f"-{name}"
        back = pd.read_parquet(out / f"report{suffix}.parquet")
        expected = report.tables()[name]
        assert_frame_equal(typed_frame(back, list(expected.columns)), expected)

    doc = json.loads((out / "report.json").read_text("utf-8"))
    assert doc["flopwatt_report"] == 1 and doc["source"] == report.source
    assert doc["parameters"]["outlier_z"] == 3.5
    gpus = {(g["hostname"], g["device_index"]): g for g in doc["tables"]["gpus"]}
    assert gpus[("a100-hw", 3)]["measured_energy_per_flop_j"] is None
    assert gpus[("t4-sim", 0)]["outlier"] is None
    assert gpus[("h100-sim", 4)]["outlier"] is True

    md = (out / "report.md").read_text("utf-8")
    assert "## Spec-achievability verdict" in md and "## Outliers" in md
    assert "**SIM** sim" in md and "power cap" in md


def test_html_is_self_contained_with_figures_and_badges(
    written: list[Path], report: FleetReport
) -> None:
    page = (written[0].parent / "report.html").read_text("utf-8")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    for data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    # No external resource of any kind: every src/href is inline or a same-page anchor.
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert 'class="badge sim"' in page and 'class="badge out"' in page
    assert page.count('<tr class="sim') >= 10
    assert '<tr class="sim outlier"><td>h100-sim</td><td class="n">4</td>' in page
    assert '<tr class="outlier"><td>a100-hw</td><td class="n">2</td>' in page
    back = report_from_html(page)
    for name in TABLE_NAMES:
        assert_frame_equal(back.tables()[name], report.tables()[name])
    assert back.generated_unix_ns == report.generated_unix_ns


def test_write_report_from_a_store_path_and_format_names(fleet: Fleet, tmp_path: Path) -> None:
    paths = write_report(fleet.db_path, tmp_path, ["CSV"], now_unix_ns=NOW)
    assert paths[0] == tmp_path / "report.csv"
    assert len(pd.read_csv(paths[0])) == 16
    assert parse_formats(["markdown", "html", "HTML"]) == ["md", "html"]
    with pytest.raises(ReportFormatError, match="accepted: html, md"):
        parse_formats(["pdf"])


def test_an_empty_store_gives_empty_tables(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "empty.db").close()
    report = as_report(tmp_path / "empty.db", now_unix_ns=NOW)
    for name, df in report.tables().items():
        assert df.empty, name
    assert list(report.gpus.columns) == list(GPU_COLUMNS)
    paths = write_report(report, tmp_path / "out", FORMATS)
    assert paths[0].read_text("utf-8").count("data:image/png;base64,") == 4
    assert pd.read_parquet(tmp_path / "out" / "report.parquet").shape == (0, len(GPU_COLUMNS))
    assert json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))["tables"]["gpus"] == []


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_report_inputs(tmp_path / "nope.db")
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ReportSourceError, match="not a flopwatt database"):
        load_report_inputs(tmp_path / "junk.db")


# --- CLI ----------------------------------------------------------------------------------------


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_tables_json_and_files(fleet: Fleet, tmp_path: Path) -> None:
    db = str(fleet.db_path)
    summary = invoke("report", "--db", db)
    assert summary.exit_code == 0, summary.output
    for text in (
        "Fleet: 16 devices on 6 hosts",
        "Devices by SKU",
        "Spec achievability",
        "Top outliers",
        "power cap",
    ):
        assert text in summary.stdout, text
    assert "slow, hungry" in summary.stdout  # the kinds in the report's order
    assert "new-node" in summary.stdout  # suspect: registered, never measured
    assert "Per-GPU table" not in summary.stdout  # the full tables only on request
    tables = invoke("report", "--db", db, "--verbose")
    for text in ("Fleet: 16 devices", "Spec-achievability verdict", "Outliers", "Per-GPU table"):
        assert text in tables.stdout, text

    doc = json.loads(invoke("report", "--db", db, "--json").stdout)
    assert {g["device_uuid"] for g in doc["tables"]["outliers"]} == {
        "GPU-h100-sim-4",
        "GPU-a100-hw-2",
    }

    res = invoke("report", "--db", db, "--format", "csv,json", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["written"][0] == str(tmp_path / "report.csv")

    res = invoke("report", "--db", db, "--format", "csv", "--out", "-")
    assert res.stdout.splitlines()[0].startswith("hostname,device_uuid,")

    stricter = json.loads(invoke("report", "--db", db, "--json", "--outlier-z", "20").stdout)
    assert [g["device_uuid"] for g in stricter["tables"]["outliers"]] == ["GPU-h100-sim-4"]


def test_cli_errors(tmp_path: Path) -> None:
    res = invoke("report", "--db", str(tmp_path / "missing.db"))
    assert res.exit_code == 1 and "no flopwatt database" in res.output
    res = invoke("report", "--db", "x.db", "--collector", "http://127.0.0.1:1")
    assert res.exit_code == 2 and "not both" in res.output
    res = invoke("report", "--db", "x.db", "--format", "pdf")
    assert res.exit_code == 2 and "unknown format" in res.output
    res = invoke("report", "--collector", "http://127.0.0.1:1")
    assert res.exit_code == 1 and "cannot reach" in res.output


# --- collector ------------------------------------------------------------------------------


async def test_collector_serves_the_report(fleet: Fleet, tmp_path: Path) -> None:
    db = tmp_path / "collector.db"
    db.write_bytes(fleet.db_path.read_bytes())
    async with collector(tmp_path, db_path=db) as running:
        status, page = await http_get(f"{running.http_url}/report")
        assert status == 200
        assert page.count("data:image/png;base64,") == 4
        served = report_from_html(page)
        assert served.source == str(db)
        out = served.outliers
        assert set(zip(out["hostname"], out["limiter"], strict=True)) == {
            ("h100-sim", "none"),
            ("a100-hw", "power cap"),
        }

        res = await asyncio.to_thread(
            invoke, "report", "--collector", running.http_url, "--format", "html,csv",
            "--out", str(tmp_path / "from-collector"),
        )  # fmt: skip
        assert res.exit_code == 0, res.output
    csv = pd.read_csv(tmp_path / "from-collector" / "report.csv")
    assert len(csv) == 16
    html = (tmp_path / "from-collector" / "report.html").read_text("utf-8")
    assert 'class="badge sim"' in html and report_from_html(html).source == str(db)


def test_small_throughputs_are_not_printed_as_zero() -> None:
    from flopwatt.report.columns import tflops_text

    assert tflops_text(989.5e12) == "989.5"
    assert tflops_text(12.64e12) == "12.6"
    assert tflops_text(6.24e12) == "6.24"
    assert tflops_text(0.0512e12) == "0.0512"  # a CPU's fp64: was "0.0"
    assert tflops_text(None) == "—" and tflops_text(float("nan")) == "—"
