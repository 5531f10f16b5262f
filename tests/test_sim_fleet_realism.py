"""The simulated fleet behaves like a real one (issue 15): per-precision GEMM fractions from one
cited table, a device-to-device spread drawn from each GPU's UUID, power limits where the
sources put them, and a demo fleet whose report flags the injected faults — and nothing else —
by an ordinary robust z (every cohort's MAD > 0; where a fault sits, above the report's floor).

The fleet is simulated without running the demo: each node of ``default_fleet()`` becomes the
same :class:`SimBackend` the demo builds, each GPU reports what the sim GEMM job would measure
in steady state (:meth:`SimDevice.sustained_flops_per_s`, :meth:`SimDevice.operating_point`),
and those rows go through the report's own tables and outlier scoring.
"""

from __future__ import annotations

import math
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from flopwatt.agent.devices.sim import (
    ARCH_GEMM,
    GEMM_SOURCES,
    LOW_TDP_PARTS,
    NOMINAL,
    POWER_SPREAD_SIGMA,
    RATE_SPREAD_SIGMA,
    SKU_GEMM,
    SPREAD_CLIP_SIGMAS,
    DeviceSpread,
    SimBackend,
    SimDevice,
    gemm_figure,
    parse_fault,
)
from flopwatt.agent.jobs import sim_jobs
from flopwatt.agent.jobs.sim_jobs import DEFAULT_GEMM_PRECISIONS
from flopwatt.agent.sampler import Sampler
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.registry import GpuSpec, PeakUnit, load_registry
from flopwatt.analysis.throttle import ThrottleReason, decode_throttle
from flopwatt.commands.demo_run import SimNode, default_fleet
from flopwatt.records import GemmJobSpec, JobSpec
from flopwatt.report.tables import (
    DEVICE_INPUT_COLUMNS,
    MAD_FLOOR_RATIO,
    OUTLIER_Z,
    RESULT_INPUT_COLUMNS,
    FleetReport,
    ReportInputs,
    build_report,
)

NOW_NS = 1_800_000_000_000_000_000
PRECISIONS = [Precision.parse(p) for p in DEFAULT_GEMM_PRECISIONS]
REGISTRY = load_registry()
#: The report's measured-energy-per-FLOP input column (J/FLOP), whatever it is called today.
ENERGY = next(c for c in RESULT_INPUT_COLUMNS if c.startswith("measured") and "per_flop" in c)


# --- the demo fleet, simulated to steady state ---------------------------------------------


@dataclass(frozen=True)
class Fleet:
    """The simulated fleet: its devices, the injected faults by UUID, and the report."""

    devices: dict[str, SimDevice]
    slow: set[str]
    capped: set[str]
    report: FleetReport


def _simulate(nodes: Sequence[SimNode], seed: int = 0) -> Fleet:
    """What the demo's GEMM job would report for every GPU and precision, fed to the report."""
    device_rows, result_rows = [], []
    devices: dict[str, SimDevice] = {}
    slow: set[str] = set()
    capped: set[str] = set()
    for node in nodes:
        backend = SimBackend.from_options(
            sku=node.sku, gpus=node.gpus, seed=seed, faults=list(node.faults), host=node.hostname
        )
        sims = backend.sim_devices()
        for text in node.faults:
            fault = parse_fault(text)
            if fault.kind == "slow":
                slow.add(sims[fault.index].info.uuid)
            elif fault.kind == "power-cap":
                capped.add(sims[fault.index].info.uuid)
            # (health faults — row-remap, xid, ecc — leave efficiency alone)
        for d in sims:
            info = d.info
            devices[info.uuid] = d
            device_rows.append(
                {
                    "device_uuid": info.uuid,
                    "hostname": node.hostname,
                    "device_index": info.index,
                    "name": info.name,
                    "kind": "gpu",
                    "sku": node.sku,
                    "sku_match": "name",
                    "simulated": True,
                    "power_limit_enforced_w": info.power_limit_enforced_w,
                    "throttle_reasons_capable": True,
                    "driver_version": "sim",
                    "registered_unix_ns": NOW_NS,
                }
            )
            for precision in PRECISIONS:
                sustained = d.sustained_flops_per_s(precision)
                peak = d.spec.best_peak(precision)
                if sustained is None or peak is None:
                    continue
                point = d.operating_point(precision)
                result_rows.append(
                    {
                        "device_uuid": info.uuid,
                        "job_id": "gemm-1",
                        "kind": "gemm",
                        "precision": precision.value,
                        "finished_unix_ns": NOW_NS,
                        "simulated": True,
                        "burst_flops_per_s": sustained,
                        "sustained_flops_per_s": sustained,
                        "mean_power_w": point.power_w,
                        "throttle_reasons_seen": point.throttle_reasons,
                        "power_limit_w": info.power_limit_enforced_w,
                        "sm_clock_mean_mhz": point.clock_mhz,
                        "driver_version": "sim",
                        "datapath": peak.unit.value,
                        "spec_peak_flops_per_s": peak.flops_per_s,
                        "spec_tdp_w": d.spec.tdp_w,
                        # The job divides the energy counter by the FLOPs of the same window:
                        # in steady state that is power ÷ rate.
                        ENERGY: point.power_w / sustained,
                    }
                )
    # Every column given is one the report reads: a renamed input fails here, not silently.
    assert set(device_rows[0]) <= set(DEVICE_INPUT_COLUMNS)
    assert set(result_rows[0]) <= set(RESULT_INPUT_COLUMNS)
    inputs = ReportInputs(
        devices=pd.DataFrame(device_rows),
        results=pd.DataFrame(result_rows),
        telemetry=pd.DataFrame({"device_uuid": pd.Series(dtype=object)}),
        source="test",
    )
    return Fleet(devices, slow, capped, build_report(inputs, now_unix_ns=NOW_NS))


def _expected_flags(fleet: Fleet) -> set[tuple[str, str]]:
    """(device, precision) rows the injected faults should flag: every precision of the slowed
    GPU, and every precision at which the half-TDP cap pulls the capped GPU's clock well below
    where its stock limit would leave it."""
    expected = set()
    for uuid in fleet.slow:
        d = fleet.devices[uuid]
        expected |= {(uuid, p.value) for p in PRECISIONS if d.spec.best_peak(p) is not None}
    for uuid in fleet.capped:
        d = fleet.devices[uuid]
        for p in PRECISIONS:
            if d.spec.best_peak(p) is None:
                continue
            capped = d.operating_point(p).clock_factor
            stock = d.operating_point(p, limit_w=d.spec.tdp_w).clock_factor
            if capped < 0.9 * stock:
                expected.add((uuid, p.value))
    return expected


def test_the_steady_state_is_what_the_sim_gemm_job_reports() -> None:
    """The fleet above is simulated through :meth:`SimDevice.sustained_flops_per_s` and
    :meth:`SimDevice.operating_point`; the sim GEMM job the demo runs reports the same numbers
    (same code path), fault and spread included."""
    b = SimBackend.from_options(
        sku="H100-SXM5-80GB", gpus=3, seed=0, host="steady", faults=["power-cap:350@1"]
    )
    sampler = Sampler(b.devices(), lambda _batch: None, interval_s=0.05)
    sampler.start()
    try:
        spec = JobSpec(gemm=GemmJobSpec(precisions=("bf16", "fp32"), sustain_s=0.3))
        results = sim_jobs.run("job-s", spec, b.devices(), sampler, {})
    finally:
        sampler.stop(flush=False)
    devices = {d.info.uuid: d for d in b.sim_devices()}
    assert len(results) == 6
    for r in results:
        g, d = r.gemm, devices[r.device_uuid]
        assert g is not None and g.sustained_flops_per_s is not None and g.mean_power_w
        precision = Precision.parse(g.precision)
        assert g.sustained_flops_per_s == pytest.approx(d.sustained_flops_per_s(precision))
        # Mean power over the window: the steady state ± the 1 % sensor noise.
        point = d.operating_point(precision)
        assert g.mean_power_w == pytest.approx(point.power_w, rel=0.02)


FLEETS = {
    "default": default_fleet(),
    # `flopwatt demo --quick --sim-nodes 1` (the CI demo): 8-GPU cohorts
    "one node per SKU": default_fleet(nodes_per_sku=1),
}


@pytest.fixture(scope="module", params=list(FLEETS), ids=list(FLEETS))
def fleet(request: pytest.FixtureRequest) -> Fleet:
    return _simulate(FLEETS[request.param])


def test_the_report_flags_exactly_the_injected_faults(fleet: Fleet) -> None:
    outliers = fleet.report.outliers
    flagged = set(zip(outliers["device_uuid"], outliers["precision"], strict=True))
    assert fleet.slow and fleet.capped
    assert set(outliers["device_uuid"]) == fleet.slow | fleet.capped
    assert flagged == _expected_flags(fleet)
    gpus = fleet.report.gpus
    for uuid in fleet.slow:
        rows = gpus[gpus["device_uuid"] == uuid]
        assert (rows["sustained_robust_z"] <= -OUTLIER_Z).all()
        assert rows["outlier_kind"].str.contains("slow").all()
    for uuid in fleet.capped:
        rows = outliers[outliers["device_uuid"] == uuid]
        assert (rows["sustained_robust_z"] <= -OUTLIER_Z).all()
        assert (rows["limiter"] == "power cap").all()
    # Every other measured row was assessed and found ordinary.
    healthy = gpus[~gpus["device_uuid"].isin(fleet.slow | fleet.capped)]
    assert healthy["outlier"].eq(False).all()


def test_every_cohort_has_a_real_spread(fleet: Fleet) -> None:
    """MAD > 0 in every cohort; in the cohorts that hold a fault it is above the report's 1 %
    floor, so the faults are found by an ordinary robust z, not by one scaled to the floor."""
    gpus = fleet.report.gpus
    faulty = fleet.slow | fleet.capped
    for cohort, rows in gpus.groupby("cohort"):
        for metric in ("sustained_flops_per_s", ENERGY):
            v = rows[metric].to_numpy(dtype=float)
            median = float(np.median(v))
            mad = float(np.median(np.abs(v - median)))
            assert mad > 0, (cohort, metric)
            if rows["device_uuid"].isin(faulty).any():
                assert mad > MAD_FLOOR_RATIO * abs(median), (cohort, metric, mad / median)


def test_verdicts_follow_the_limiter_model() -> None:
    """CUDA-core FP32/FP64 GEMMs on datacenter parts are not power-limited; a T4's tensor paths
    are; no verdict sits at 95 % of the limit for every SKU and precision any more."""
    fleet = _simulate(default_fleet())
    verdicts = fleet.report.verdicts.set_index(["sku", "precision"])
    for sku in ("V100-SXM2-32GB", "A100-SXM4-80GB", "H100-SXM5-80GB"):
        capped = sum(fleet.devices[u].spec.sku == sku for u in fleet.capped)
        for precision in ("fp32", "fp64"):
            if sku.startswith("A100") and precision == "fp64":
                continue  # FP64 tensor cores: power-limited on the A100 (NVIDIA's HPL clock)
            assert verdicts.loc[(sku, precision), "verdict"] != "power-limited", (sku, precision)
            assert verdicts.loc[(sku, precision), "power_bound_gpus"] == capped
    for precision in ("fp16", "int8"):
        assert verdicts.loc[("T4", precision), "verdict"] == "power-limited"
        assert verdicts.loc[("T4", precision), "power_bound_gpus"] == 4
    assert verdicts["mean_power_over_limit_median_ratio"].round(2).nunique() > 3


# --- the cited figures are what a nominal device delivers ----------------------------------


def _nominal(sku: str) -> SimDevice:
    """A device of ``sku`` with no spread: the part the cited figures describe."""
    return SimDevice(REGISTRY.get(sku), index=0, host="h", seed=0, spread=NOMINAL)


@pytest.mark.parametrize("spec", [s for s in REGISTRY if s.tdp_w], ids=lambda s: s.sku)
def test_a_nominal_device_delivers_the_cited_fraction(spec: GpuSpec) -> None:
    tdp = spec.tdp_w
    assert tdp is not None
    d = _nominal(spec.sku)
    for precision in Precision:
        peak = spec.best_peak(precision)
        figure = gemm_figure(spec, precision)
        if peak is None:
            assert figure is None and d.sustained_flops_per_s(precision) is None
            continue
        assert figure is not None
        # Every registry part has an entry of its own (no silent fallback) with a known source.
        keyed = (spec.sku, precision) in SKU_GEMM or (
            spec.architecture,
            precision,
            peak.unit,
        ) in ARCH_GEMM
        assert keyed, (spec.sku, precision)
        assert figure.source in GEMM_SOURCES
        assert d.sustained_flops_per_s(precision) == pytest.approx(
            figure.fraction * peak.flops_per_s, rel=1e-12
        )
        # The unthrottled rate never beats the spec peak, and a power-limited figure really is.
        achievable = d.achievable_flops_per_s(precision)
        assert achievable is not None and achievable <= peak.flops_per_s * (1 + 1e-12)
        point = d.operating_point(precision)
        capped = ThrottleReason.SW_POWER_CAP in decode_throttle(point.throttle_reasons)
        assert capped == (figure.demand_ratio > 1 + 1e-12)
        assert point.power_w <= tdp * (1 + 1e-12)


def test_the_table_holds_the_cited_numbers() -> None:
    """The sourced entries are the sources' arithmetic (GEMM_SOURCES has the raw figures)."""
    t, v = PeakUnit.TENSOR, PeakUnit.VECTOR
    assert ARCH_GEMM[("Hopper", Precision.BF16, t)].fraction == pytest.approx(794.5 / 989, abs=5e-3)
    assert ARCH_GEMM[("Hopper", Precision.FP8, t)].fraction == pytest.approx(
        1402.6 / 1979, abs=1e-3
    )
    assert ARCH_GEMM[("Ampere", Precision.FP16, t)].fraction == pytest.approx(257 / 312, abs=1e-3)
    assert ARCH_GEMM[("Volta", Precision.FP16, t)].fraction == pytest.approx(83 / 125, abs=5e-3)
    assert ARCH_GEMM[("Volta", Precision.FP32, v)].fraction == pytest.approx(
        83 / 7 / 15.7, abs=5e-3
    )
    assert ARCH_GEMM[("Turing", Precision.FP16, t)].fraction == pytest.approx(24 / 65, abs=5e-3)
    assert ARCH_GEMM[("Blackwell", Precision.BF16, t)].fraction == pytest.approx(
        1745 / 2250, abs=1e-3
    )
    assert ARCH_GEMM[("CDNA 3", Precision.BF16, t)].fraction == pytest.approx(
        668.4 / 1300, abs=1e-3
    )
    assert SKU_GEMM[("H100-PCIe-80GB", Precision.BF16)].fraction == pytest.approx(
        627.5 / 756.5, abs=5e-3
    )
    # A100 FP64 tensor: NVIDIA's HPL clock under the 400 W limit, 1305 of 1410 MHz.
    a100 = _nominal("A100-SXM4-80GB")
    assert a100.operating_point(Precision.FP64).clock_mhz == pytest.approx(1305, rel=2e-3)
    # The T4 runs its tensor GEMMs far below its clock (the forum's power cap).
    t4 = _nominal("T4").operating_point(Precision.FP16)
    assert t4.clock_factor == pytest.approx(0.37 / 0.80, rel=1e-2)


def test_low_tdp_parts_are_power_limited_on_every_tensor_path() -> None:
    for sku in LOW_TDP_PARTS:
        spec = REGISTRY.get(sku)
        d = _nominal(sku)
        for precision in Precision:
            peak = spec.best_peak(precision)
            if peak is None or peak.unit is not PeakUnit.TENSOR:
                continue
            reasons = decode_throttle(d.operating_point(precision).throttle_reasons)
            assert ThrottleReason.SW_POWER_CAP in reasons, (sku, precision)


def test_datacenter_cuda_core_gemms_stay_under_the_limit() -> None:
    for sku in ("V100-SXM2-32GB", "A100-SXM4-80GB", "H100-SXM5-80GB", "B200"):
        d = _nominal(sku)
        point = d.operating_point(Precision.FP32)
        assert point.throttle_reasons == 0 and point.clock_factor == 1.0
        tdp = d.spec.tdp_w
        assert tdp is not None and point.power_w < 0.8 * tdp


# --- the spread --------------------------------------------------------------------------------


def test_the_spread_is_deterministic_per_device_and_stays_within_its_bounds() -> None:
    bounds = (SPREAD_CLIP_SIGMAS * RATE_SPREAD_SIGMA, SPREAD_CLIP_SIGMAS * POWER_SPREAD_SIGMA)
    assert bounds == pytest.approx((0.05, 0.02))  # rate within ±5 %, power within ±2 %
    rng = np.random.default_rng(3)
    spreads = [
        DeviceSpread.for_uuid(f"GPU-{uuidlib.UUID(bytes=rng.bytes(16), version=4)}")
        for _ in range(4000)
    ]
    z = np.array(
        [((s.rate - 1) / RATE_SPREAD_SIGMA, (s.power - 1) / POWER_SPREAD_SIGMA) for s in spreads]
    )
    assert float(np.hypot(z[:, 0], z[:, 1]).max()) <= SPREAD_CLIP_SIGMAS + 1e-9
    for column in (0, 1):
        assert abs(float(z[:, column].mean())) < 0.05
        # A 2-D normal kept within 2 σ of its centre keeps 83 % of σ on each axis.
        assert 0.78 < float(z[:, column].std()) < 0.88
    assert abs(float(np.corrcoef(z[:, 0], z[:, 1])[0, 1])) < 0.05  # independent factors
    assert DeviceSpread.for_uuid("GPU-x") == DeviceSpread.for_uuid("GPU-x")
    # A simulated device carries the spread of its UUID, whatever the run.
    a = SimBackend.from_options(sku="H100-SXM5-80GB", gpus=2, seed=5, host="n").sim_devices()
    b = SimBackend.from_options(sku="H100-SXM5-80GB", gpus=2, seed=5, host="n").sim_devices()
    assert [d.spread for d in a] == [d.spread for d in b]
    assert a[0].spread == DeviceSpread.for_uuid(a[0].info.uuid) != a[1].spread


@pytest.mark.parametrize(
    ("sku", "precision"),
    [
        ("H100-SXM5-80GB", Precision.FP32),
        ("H100-SXM5-80GB", Precision.BF16),
        ("T4", Precision.FP16),
    ],
)
def test_a_device_delivers_within_the_bounds_its_spread_allows(
    sku: str, precision: Precision
) -> None:
    """Off the nominal device, throughput moves with the rate factor, and on a power-limited
    path also with the power factor (a leakier GPU clocks lower at the cap) — never further
    than the clipped factors allow."""
    spec = REGISTRY.get(sku)
    peak = spec.best_peak(precision)
    figure = gemm_figure(spec, precision)
    assert peak is not None and figure is not None
    nominal = figure.fraction * peak.flops_per_s
    rate_edge = SPREAD_CLIP_SIGMAS * RATE_SPREAD_SIGMA
    power_edge = SPREAD_CLIP_SIGMAS * POWER_SPREAD_SIGMA

    def delivered(spread: DeviceSpread) -> float:
        d = SimDevice(spec, index=0, host="h", seed=0, spread=spread)
        value = d.sustained_flops_per_s(precision)
        assert value is not None
        return value / nominal

    low = delivered(DeviceSpread(rate=1 - rate_edge, power=1 + power_edge))
    high = delivered(DeviceSpread(rate=1 + rate_edge, power=1 - power_edge))
    limited = figure.demand_ratio > 1
    if not limited:  # the power factor moves the power, not the clock
        assert (low, high) == pytest.approx((1 - rate_edge, 1 + rate_edge))
    else:
        assert low < 1 - rate_edge and high > 1 + rate_edge
    for d in SimBackend.from_options(sku=sku, gpus=64, seed=11, host="bounds").sim_devices():
        value = d.sustained_flops_per_s(precision)
        assert value is not None and low <= value / nominal <= high
        if not limited:
            assert value / nominal == pytest.approx(d.spread.rate)
    assert not math.isclose(low, high)
