"""The one-screen fleet summary: precisions that agree collapse into one verdict line, an
outlier device is one line however many precisions flag it, and silent or never-measured
agents are named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from flopwatt.analysis.registry import Registry
from flopwatt.report.files import as_report
from flopwatt.report.summary import fleet_summary
from flopwatt.report.tables import FleetReport
from flopwatt.report.terminal import summary_tables
from tests.report_fleet import NOW, build_fleet


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> FleetReport:
    fleet = build_fleet(tmp_path_factory.mktemp("summary") / "fleet.db", registry)
    return as_report(fleet.db_path, now_unix_ns=NOW)


def test_devices_by_sku_and_source(report: FleetReport) -> None:
    s = fleet_summary(report)
    assert (s.devices, s.hosts, s.simulated_devices) == (16, 6, 10)
    counts = {(c.sku, c.source): (c.devices, c.hosts) for c in s.skus}
    assert counts[("H100-SXM5-80GB", "sim")] == (5, 1)
    assert counts[("H100-SXM5-80GB", "hardware")] == (1, 1)
    assert sum(c.devices for c in s.skus) == s.devices


def test_precisions_with_one_verdict_collapse_into_one_line(report: FleetReport) -> None:
    verdicts = pd.DataFrame(
        [
            ("H100-SXM5-80GB", "sim", "fp64", "not power-limited", 0.62),
            ("H100-SXM5-80GB", "sim", "fp32", "not power-limited", 0.70),
            ("H100-SXM5-80GB", "sim", "bf16", "reached", 0.81),
            ("H100-SXM5-80GB", "sim", "fp16", "reached", 0.79),
            ("H100-SXM5-80GB", "sim", "fp8", "power-limited", 0.55),
            ("T4", "sim", "fp16", "power-limited", None),
        ],
        columns=["sku", "source", "precision", "verdict", "sustained_over_spec_median_ratio"],
    )
    s = fleet_summary(dataclasses.replace(report, verdicts=verdicts))
    lines = {(v.sku, v.verdict): v for v in s.verdicts}
    assert len(s.verdicts) == 4
    reached = lines[("H100-SXM5-80GB", "reached")]
    assert reached.precisions == ("bf16", "fp16")
    assert (reached.sustained_over_spec_min_ratio, reached.sustained_over_spec_max_ratio) == (
        0.79,
        0.81,
    )
    assert lines[("H100-SXM5-80GB", "not power-limited")].precisions == ("fp64", "fp32")
    t4 = lines[("T4", "power-limited")]
    assert t4.sustained_over_spec_min_ratio is None  # absent stays absent
    table = summary_tables(s)[1]
    cells = {row[3]: row[4] for row in table.rows}
    assert cells["bf16, fp16"] == "79–81 %" and cells["fp16"] == "—"


def test_an_outlier_device_is_one_line_with_its_worst_z(report: FleetReport) -> None:
    extra = report.outliers.copy()
    extra["precision"] = "fp16"  # the same devices flagged at a second precision
    both = pd.concat([report.outliers, extra], ignore_index=True)
    s = fleet_summary(dataclasses.replace(report, outliers=both), top=1)
    assert len(s.outliers) == 1 and s.more_outliers == 1
    worst = s.outliers[0]
    assert (worst.hostname, worst.device_index) == ("h100-sim", 4)
    assert worst.precisions == ("bf16", "fp16")
    assert worst.kinds == ("slow", "hungry")
    assert abs(worst.worst_robust_z) >= 3.5


def test_silent_and_unmeasured_agents_are_suspects(report: FleetReport) -> None:
    gpus = report.gpus.copy()
    gpus.loc[gpus["hostname"] == "v100-sim", "last_seen_age_s"] = 900.0
    s = fleet_summary(dataclasses.replace(report, gpus=gpus), failed_jobs=[("t4-sim", "x")])
    why = {a.hostname: a.reason for a in s.suspects}
    assert why["v100-sim"] == "silent for 15 min"
    assert why["new-node"] == "silent for 60 min; no GEMM result from any of its devices"
    assert why["t4-sim"] == "x"
    assert fleet_summary(report).suspects == tuple(
        a for a in fleet_summary(report).suspects if a.hostname == "new-node"
    )


def test_summary_fits_one_screen(report: FleetReport, tmp_path: Path) -> None:
    rows = sum(len(t.rows) + 4 for t in summary_tables(fleet_summary(report)))
    assert rows <= 40
