"""Agent building blocks with real parts: the simulated GPU (determinism, power cap, faults),
the on-disk spool (acks, spool-full policy counted exactly), the sampler (columnar series, job
windows), the CPU backend against a real sysfs-shaped tree, and the reconnect backoff."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from flopwatt.agent.devices.base import DeviceLost, EnergyAccumulator, Snapshot
from flopwatt.agent.devices.cpu import CpuDevice
from flopwatt.agent.devices.sim import SimBackend, parse_fault
from flopwatt.agent.jobs import sim_jobs
from flopwatt.agent.sampler import Sampler, to_series, window_conditions
from flopwatt.agent.spool import Spool, SpooledMessage
from flopwatt.agent.uplink import backoff_delay
from flopwatt.analysis.precision import Precision
from flopwatt.analysis.throttle import ThrottleReason, decode_throttle
from flopwatt.records import GemmJobSpec, JobSpec, TelemetryBatch
from flopwatt.v1 import agent_pb2


class FakeClock:
    def __init__(self) -> None:
        self.t = 1_000_000_000

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e9)


def _run(backend: SimBackend, clock: FakeClock, steps: int) -> list[list[Snapshot]]:
    out = []
    for _ in range(steps):
        clock.advance(0.1)
        out.append([d.snapshot(clock.t) for d in backend.sim_devices()])
    return out


# --- sim --------------------------------------------------------------------------------------


def test_sim_is_deterministic_for_a_seed() -> None:
    runs = []
    for _ in range(2):
        clock = FakeClock()
        b = SimBackend.from_options(sku="A100-SXM4-80GB", gpus=3, seed=7, clock_ns=clock)
        b.sim_devices()[1].set_load(Precision.BF16, 1.0)
        runs.append(([d.info.uuid for d in b.sim_devices()], _run(b, clock, 30)))
    assert runs[0] == runs[1]
    other = SimBackend.from_options(sku="A100-SXM4-80GB", gpus=3, seed=8, clock_ns=FakeClock())
    assert [d.info.uuid for d in other.sim_devices()] != runs[0][0]


def test_sim_identity_is_labelled_and_matches_the_registry() -> None:
    d = SimBackend.from_options(sku="H100-SXM5-80GB", gpus=1).sim_devices()[0]
    assert d.info.simulated and d.info.sim_sku == "H100-SXM5-80GB"
    assert d.info.name == "NVIDIA H100 80GB HBM3"
    assert d.info.pci_device_id == 0x233010DE
    assert d.info.power_limit_enforced_w == 700


def test_t4_hits_its_power_cap_on_fp16_and_an_h100_sgemm_does_not() -> None:
    """A T4's tensor GEMMs are power-capped at 70 W; an SGEMM on an H100's CUDA cores stays
    under its 700 W limit (the limiter model in flopwatt.agent.devices.sim)."""
    clock = FakeClock()
    t4 = SimBackend.from_options(sku="T4", gpus=1, clock_ns=clock).sim_devices()[0]
    h100 = SimBackend.from_options(sku="H100-SXM5-80GB", gpus=1, clock_ns=clock).sim_devices()[0]
    t4.set_load(Precision.FP16, 1.0)
    h100.set_load(Precision.FP32, 1.0)
    clock.advance(5)
    s_t4, s_h = t4.snapshot(clock.t), h100.snapshot(clock.t)
    assert ThrottleReason.SW_POWER_CAP in decode_throttle(s_t4.throttle_reasons or 0)
    assert ThrottleReason.SW_POWER_CAP not in decode_throttle(s_h.throttle_reasons or 0)
    assert s_t4.power_average_1s_w == pytest.approx(70, rel=0.05)
    assert s_t4.sm_clock_mhz is not None and s_t4.sm_clock_mhz < 1590
    assert t4.rate_factor() < 1.0 and h100.rate_factor() == pytest.approx(1.0)


def test_faults_slow_power_cap_lost_and_stuck() -> None:
    clock = FakeClock()
    b = SimBackend.from_options(
        sku="H100-SXM5-80GB",
        gpus=4,
        clock_ns=clock,
        faults=["slow:0.85@0", "power-cap:350@1", "lost-after:2s@2", "stuck-power@3"],
    )
    slow, capped, lost, stuck = b.sim_devices()
    for d in (slow, capped, stuck):
        d.set_load(Precision.BF16, 1.0)
    clock.advance(1)
    # 85 % of what its clock gives (an H100's BF16 GEMM is itself power-limited).
    clock_factor = slow.operating_point(Precision.BF16).clock_factor
    assert slow.rate_factor() == pytest.approx(0.85 * clock_factor)
    snap = capped.snapshot(clock.t)
    assert snap.power_limit_w == 350 and snap.throttle_reasons is not None
    assert ThrottleReason.SW_POWER_CAP in decode_throttle(snap.throttle_reasons)
    first = stuck.snapshot(clock.t).power_instant_w
    lost.snapshot(clock.t)  # 1 s in: still there
    clock.advance(1)
    assert stuck.snapshot(clock.t).power_instant_w == first
    with pytest.raises(DeviceLost):  # 2 s in: gone
        lost.snapshot(clock.t)


def test_energy_counter_integrates_power() -> None:
    clock = FakeClock()
    d = SimBackend.from_options(sku="A100-SXM4-80GB", gpus=1, clock_ns=clock).sim_devices()[0]
    e0 = d.snapshot(clock.t).energy_j
    for _ in range(100):
        clock.advance(0.1)
        d.snapshot(clock.t)
    e1 = d.snapshot(clock.t).energy_j
    assert e0 is not None and e1 is not None
    # An idle A100 draws about 60.5 W (× this device's power spread) for 10 s.
    assert e1 - e0 == pytest.approx(60.5 * d.spread.power * 10, rel=0.01)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fast:2", "accepted"),
        ("slow:1.5", "(0, 1]"),
        ("power-cap:x", "number"),
        ("slow:0.9@x", "index"),
    ],
)
def test_bad_faults_are_explained(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        parse_fault(text)


def test_unknown_sku_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"accepted: .*H100-SXM5-80GB"):
        SimBackend.from_options(sku="H300")


# --- energy accumulator -----------------------------------------------------------------------


def test_energy_counter_reset_after_driver_reload_is_folded_in() -> None:
    acc = EnergyAccumulator()
    assert acc.update(5000.0) == 0.0
    assert acc.update(5100.0) == 100.0
    assert acc.update(30.0) == pytest.approx(130.0)  # reloaded: counter restarted from zero
    assert acc.update(80.0) == pytest.approx(180.0)
    assert acc.resets == 1


# --- spool ------------------------------------------------------------------------------------


def _telemetry(epoch: int, seq: int, size: int = 1000) -> SpooledMessage:
    m = agent_pb2.AgentMessage(epoch=epoch, sequence=seq)
    m.telemetry.series.add(device_uuid="GPU", timestamp_unix_ns=b"\0" * size)
    return SpooledMessage(epoch, seq, "telemetry", m.SerializeToString(), size // 8)


def _result(epoch: int, seq: int) -> SpooledMessage:
    m = agent_pb2.AgentMessage(epoch=epoch, sequence=seq)
    m.job_result.job_id = "j"
    m.job_result.device_uuid = "GPU"
    m.job_result.gemm.precision = "fp16"
    return SpooledMessage(epoch, seq, "job_result", m.SerializeToString(), 0)


def test_spool_keeps_unacked_across_reopen_and_forgets_acked(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db")
    for seq in range(1, 6):
        spool.append(_telemetry(2**64 - 3, seq))
    assert spool.ack(2**64 - 3, 3) == 3
    spool.close()
    again = Spool(tmp_path / "s.db")
    assert [m.sequence for m in again.pending(2**64 - 3)] == [4, 5]
    assert again.epochs() == [2**64 - 3]
    assert again.stats().messages == 2


def test_spool_full_drops_oldest_telemetry_exactly_and_never_results(tmp_path: Path) -> None:
    one = len(_telemetry(1, 1).payload)
    spool = Spool(tmp_path / "s.db", max_bytes=5 * one)
    spool.append(_result(1, 1))
    for seq in range(2, 12):
        spool.append(_telemetry(1, seq))
    stats = spool.stats()
    kinds = {m.sequence: m.kind for m in spool.iter_all()}
    dropped = [s for s, k in kinds.items() if k == "dropped"]
    assert kinds[1] == "job_result"  # never dropped
    assert len(kinds) == 11  # every sequence still there: tombstones keep it contiguous
    assert dropped == list(range(2, 2 + len(dropped)))  # the oldest telemetry went first
    assert stats.dropped_messages_total == len(dropped)
    assert stats.dropped_samples_total == len(dropped) * (1000 // 8)
    assert stats.payload_bytes <= 5 * one + len(_result(1, 1).payload)
    tomb = agent_pb2.AgentMessage.FromString(
        next(m for m in spool.iter_all() if m.kind == "dropped").payload
    )
    assert tomb.dropped.samples == 125 and tomb.dropped.reason == "spool full"


def test_spool_ledger_counts_what_a_killed_run_held_in_memory(tmp_path: Path) -> None:
    """A run that was killed (no close_epoch) with 37 samples held in memory: the next run's
    recover() appends a tombstone for them in the old epoch at the next sequence, counts them,
    and the ledger (produced) covers the tombstone; a clean stop leaves nothing to recover."""
    killed, clean, current = 2**64 - 9, 5, 6
    spool = Spool(tmp_path / "s.db")
    for seq in (1, 2, 3):
        spool.append(_telemetry(killed, seq), pending_samples=0)
    spool.note_pending(killed, 37, 1_000)
    assert spool.ack(killed, 3) == 3
    spool.append(_telemetry(clean, 1), pending_samples=0)
    spool.note_pending(clean, 12, 2_000)
    spool.close_epoch(clean)
    spool.close()

    again = Spool(tmp_path / "s.db")
    losses = again.recover(current)
    assert [(x.epoch, x.sequence, x.samples) for x in losses] == [(killed, 4, 37)]
    tomb = agent_pb2.AgentMessage.FromString(
        next(m for m in again.iter_all() if m.kind == "dropped").payload
    )
    assert (tomb.epoch, tomb.sequence) == (killed, 4)
    assert (tomb.dropped.reason, tomb.dropped.samples) == ("agent stopped", 37)
    assert again.produced()[killed] == 4
    assert again.stats().killed_samples_total == 37
    assert killed in again.epochs()
    assert again.recover(current) == []  # once only


def test_spool_replaces_a_message_too_large_to_send_by_a_counted_tombstone(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    big = _telemetry(1, 1, size=80_000)
    spool.append(big)
    tomb = spool.replace_too_large(big)
    assert (tomb.epoch, tomb.sequence, tomb.kind) == (1, 1, "dropped")
    msg = agent_pb2.AgentMessage.FromString(tomb.payload)
    assert (msg.dropped.reason, msg.dropped.samples) == ("too large", 10_000)
    assert msg.dropped.original_kind == "telemetry"
    assert [m.kind for m in spool.pending(1)] == ["dropped"]
    stats = spool.stats()
    assert (stats.oversized_messages_total, stats.oversized_samples_total) == (1, 10_000)
    assert stats.payload_bytes == len(tomb.payload)


# --- sampler ----------------------------------------------------------------------------------


def test_series_split_when_a_reading_becomes_unavailable() -> None:
    snaps = [
        Snapshot(1, power_instant_w=100.0, sm_clock_mhz=1980),
        Snapshot(2, power_instant_w=101.0, sm_clock_mhz=1980),
        Snapshot(3, sm_clock_mhz=1980),  # power read failed this tick
        Snapshot(4, power_instant_w=99.0, sm_clock_mhz=1975),
    ]
    series = to_series("GPU", snaps)
    assert [len(s) for s in series] == [2, 1, 2 - 1]
    assert "power_instant_w" not in series[1].columns  # absent, never zero
    assert series[0].columns["power_instant_w"].tolist() == [100.0, 101.0]
    assert series[0].columns["sm_clock_mhz"].dtype == np.dtype("<u4")


def test_window_conditions_energy_from_counter_and_integration() -> None:
    base = 10**18
    snaps = [
        Snapshot(
            base + i * 10**8,
            power_instant_w=100.0 + i,
            energy_j=1000.0 + 10.0 * i,
            sm_clock_mhz=1900 + i,
            throttle_reasons=4 if i == 3 else 0,
        )
        for i in range(11)
    ]
    c = window_conditions(snaps, 1.0)
    assert c.energy_from_counter and c.energy_j == pytest.approx(100.0)
    assert c.mean_power_w == pytest.approx(100.0)  # 100 J over the 1.0 s covered
    assert c.sm_clock_min_mhz == 1900 and c.throttle_reasons_seen == 4
    no_counter = [Snapshot(s.timestamp_unix_ns, power_instant_w=s.power_instant_w) for s in snaps]
    c2 = window_conditions(no_counter, 1.0)
    assert not c2.energy_from_counter
    assert c2.energy_j == pytest.approx(105.0)  # trapezoid of 100…110 W over 1 s
    empty = window_conditions([], 2.0)
    assert empty.energy_j is None and empty.mean_power_w is None


def test_sampler_batches_and_drops_lost_devices() -> None:
    clock = FakeClock()
    b = SimBackend.from_options(sku="T4", gpus=2, clock_ns=clock, faults=["lost-after:0.25s@1"])
    batches: list[TelemetryBatch] = []
    lost: list[str] = []
    sampler = Sampler(
        b.devices(),
        batches.append,
        wall_ns=clock,
        mono_ns=clock,
        on_lost=lambda d, why: lost.append(d.info.uuid),
    )
    for _ in range(5):
        clock.advance(0.1)
        sampler.tick()
    sampler.flush()
    assert len(batches) == 1
    counts = {s.device_uuid: len(s) for s in batches[0].series}
    gone = b.sim_devices()[1].info.uuid
    assert counts[b.sim_devices()[0].info.uuid] == 5
    assert counts[gone] == 2 and lost == [gone]
    assert [d.info.uuid for d in sampler.live_devices()] == [b.sim_devices()[0].info.uuid]


# --- cpu backend --------------------------------------------------------------------------------


def _tree(root: Path, energy_uj: int) -> None:
    rapl = root / "sys/class/powercap/intel-rapl:0"
    rapl.mkdir(parents=True, exist_ok=True)
    (rapl / "energy_uj").write_text(f"{energy_uj}\n")
    (rapl / "max_energy_range_uj").write_text("262143328850\n")
    (rapl / "constraint_0_power_limit_uw").write_text("125000000\n")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/cpuinfo").write_text("model name\t: Test CPU 9000\n")
    (root / "proc/meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 400 kB\n")
    (root / "proc/stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123\n")


def test_cpu_backend_power_from_rapl(tmp_path: Path) -> None:
    clock = FakeClock()
    _tree(tmp_path, 1_000_000)
    cpu = CpuDevice(tmp_path, hostname="h", clock_ns=clock)
    assert cpu.info.name == "Test CPU 9000" and cpu.info.uuid == "CPU-0123456789ab"
    assert cpu.info.power_limit_enforced_w == 125.0
    first = cpu.snapshot(1)
    assert first.power_instant_w is None and first.energy_j == 0.0  # one reading: no rate yet
    clock.advance(0.5)
    (tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("31000000\n")
    (tmp_path / "proc/stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")
    snap = cpu.snapshot(2)
    assert snap.power_instant_w == pytest.approx(60.0)  # 30 J in 0.5 s
    assert snap.energy_j == pytest.approx(30.0)
    assert snap.gpu_utilization_ratio == pytest.approx(0.5)
    assert snap.memory_used_bytes == 600 * 1024


def test_cpu_backend_without_rapl_reports_power_absent(tmp_path: Path) -> None:
    _tree(tmp_path, 0)
    for f in (tmp_path / "sys/class/powercap/intel-rapl:0").iterdir():
        f.unlink()
    cpu = CpuDevice(tmp_path, hostname="h")
    snap = cpu.snapshot(1)
    assert not cpu.info.capabilities.energy_counter
    assert snap.power_instant_w is None and snap.energy_j is None and snap.power_limit_w is None


# --- backoff ----------------------------------------------------------------------------------


def test_full_jitter_backoff_grows_to_its_cap() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, rng, base_s=1, cap_s=30) for a in range(12) for _ in range(50)]
    assert all(0 <= d <= 30 for d in delays)
    assert max(backoff_delay(0, rng) for _ in range(200)) <= 1.0
    # The default cap is 10 s: a thousand agents coming back spread over 0–10 s, none later.
    late = [backoff_delay(10, rng) for _ in range(200)]
    assert max(late) <= 10.0 and max(late) > 8


def test_sim_uuids_differ_between_nodes_with_the_same_seed() -> None:
    """Regression: UUIDs were derived from (seed, index) only, so every simulated node of a
    demo fleet had the same GPU UUIDs and the collector mixed their data."""
    a = SimBackend.from_options(sku="T4", gpus=2, seed=0, host="node-a").sim_devices()
    b = SimBackend.from_options(sku="T4", gpus=2, seed=0, host="node-b").sim_devices()
    assert {d.info.uuid for d in a}.isdisjoint({d.info.uuid for d in b})


def test_sim_gemm_energy_per_flop_covers_the_same_seconds_as_its_energy() -> None:
    """Regression: the sim GEMM job divided the sampler's energy (first to last reading, up to
    two sampling periods short of the run) by the FLOPs of the whole run, so J/FLOP came out
    low by a random few percent per node (demo: a whole V100 node flagged "hungry"). Energy and
    work must cover the same seconds: J/FLOP = mean power ÷ sustained FLOP/s."""
    b = SimBackend.from_options(sku="A100-SXM4-80GB", gpus=2, seed=3)
    sampler = Sampler(b.devices(), lambda _batch: None, interval_s=0.1)
    sampler.start()
    try:
        spec = JobSpec(gemm=GemmJobSpec(precisions=("fp16",), sustain_s=0.7))
        results = sim_jobs.run("job-e", spec, b.devices(), sampler, {})
    finally:
        sampler.stop(flush=False)
    assert len(results) == 2
    for r in results:
        g = r.gemm
        assert g is not None and g.mean_power_w is not None and g.energy_per_flop_j is not None
        assert g.sustained_flops_per_s is not None
        ratio = g.energy_per_flop_j * g.sustained_flops_per_s / g.mean_power_w
        assert ratio == pytest.approx(1.0, rel=1e-3)


def test_spool_never_replaces_the_oldest_messages_that_may_be_in_flight(tmp_path: Path) -> None:
    """The uplink sends each epoch from its oldest unacked message, at most ``keep_first`` of
    them unacked: the collector may already hold those, so a full spool tombstones only later
    telemetry (a tombstone for a message the collector stored would make the agent count a
    drop the collector never sees, and the resent tombstone a conflict)."""
    one = len(_telemetry(1, 1).payload)
    spool = Spool(tmp_path / "s.db", max_bytes=5 * one, keep_first=3)
    for seq in range(1, 12):
        spool.append(_telemetry(1, seq))
    kinds = {m.sequence: m.kind for m in spool.iter_all()}
    assert [kinds[s] for s in (1, 2, 3)] == ["telemetry"] * 3  # possibly in flight: kept
    dropped = [s for s, k in kinds.items() if k == "dropped"]
    assert dropped and dropped[0] == 4  # the oldest after them went first
    assert spool.stats().dropped_messages_total == len(dropped)
    assert spool.ack(1, 3) == 3  # once acked, the next oldest are the ones in flight
    spool.append(_telemetry(1, 12))
    kinds = {m.sequence: m.kind for m in spool.iter_all()}
    assert min(kinds) == 4
