"""``flopwatt demo --once``, as CI and a new user run it: a collector, this machine's agent and
a simulated V100/A100/H100/T4 fleet; the report must name the deliberately slowed GPU as an
outlier and the power-capped one's limiter as the power cap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def test_demo_once_writes_the_fleet_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flopwatt",
            "demo",
            "--once",
            "--quick",
            "--sim-nodes",
            "1",
            "--out",
            str(out),
            "--db",
            str(tmp_path / "demo.db"),
            "--http-listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = out / "report.html"
    assert html.stat().st_size > 10_000
    assert "data:image/png;base64" in html.read_text()
    gpus = pd.read_csv(out / "report.csv")
    skus = set(gpus["sku"].dropna())
    assert {"V100-SXM2-32GB", "A100-SXM4-80GB", "H100-SXM5-80GB", "T4"} <= skus
    local = gpus[gpus["source"] == "hardware"]
    assert not local.empty  # this machine's device is in the report
    outliers = pd.read_csv(out / "report-outliers.csv")
    slowed = outliers[(outliers["hostname"] == "a100-node-1") & (outliers["device_index"] == 3)]
    assert not slowed.empty and slowed["outlier_kind"].str.contains("slow").all()
    capped = outliers[(outliers["hostname"] == "h100-node-1") & (outliers["device_index"] == 5)]
    assert not capped.empty and (capped["limiter"] == "power cap").all()
    # The simulated fleet has realistic spread, and the ordinary robust z finds exactly the two
    # injected faults (seeded: deterministic).
    flagged = set(zip(outliers["hostname"], outliers["device_index"], strict=True))
    assert flagged == {("a100-node-1", 3), ("h100-node-1", 5)}
    skus = pd.read_csv(out / "report-skus.csv")
    sim_cohorts = skus[(skus["source"] == "sim") & (skus["gpus"] >= 3)]
    assert (sim_cohorts["sustained_over_spec_mad_ratio"] > 0).all()
    assert "report:" in proc.stdout and "metrics:" in proc.stdout
    # A summary for a person (the full tables are in the report and behind --verbose) …
    assert "Fleet: " in proc.stdout and "Top outliers" in proc.stdout
    assert "a100-node-1" in proc.stdout and "h100-node-1" in proc.stdout  # the two outliers
    assert "Per-GPU table" not in proc.stdout
    assert len(proc.stdout.splitlines()) < 80
    # … and no library or log noise on a normal run.
    for noise in ("WARNING", "ERROR", "Traceback", "fork_posix", "Other threads"):
        assert noise not in proc.stderr, proc.stderr[-2000:]
