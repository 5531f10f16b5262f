"""NVML health counters against the typed fake (tests/test_nvml_backend.py, with GPM from
tests/test_nvml_gpm.py): ECC volatile counts, row remapping, the PCIe replay counter, NVLink CRC
errors, replays and recoveries summed over the links that answer, XID events — read every
HEALTH_INTERVAL_S and repeated in between, absent (never 0) where the GPU does not offer them."""

from __future__ import annotations

from typing import Any

import pynvml

from flopwatt.agent.devices.nvml import HEALTH_INTERVAL_S
from tests.test_nvml_backend import FakeGpu, a100, gpu, h100, open_fake
from tests.test_nvml_gpm import Clock, GpmFakeNvml, _open

S = 1_000_000_000
T0 = 1_764_997_200 * S


class HealthFakeNvml(GpmFakeNvml):
    """The fake with row remapping, PCIe replays and per-link NVLink error counters, from
    attributes on each FakeGpu (``remap``, ``replays``, ``nvlinks``, ``crc_per_link``,
    ``link_replays_per_link``, ``link_recoveries_per_link``)."""

    def nvmlDeviceGetRemappedRows(self, handle: FakeGpu, /) -> tuple[int, int, int, int]:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetRemappedRows")
        return getattr(g, "remap", (0, 0, 0, 0))  # type: ignore[no-any-return]

    def nvmlDeviceGetPcieReplayCounter(self, handle: FakeGpu, /) -> int:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetPcieReplayCounter")
        return int(getattr(g, "replays", 0))

    def nvmlDeviceGetNvLinkErrorCounter(  # noqa: N802
        self, handle: FakeGpu, link: int, counter: int, /
    ) -> int:
        g = self._gpu(handle, "nvmlDeviceGetNvLinkErrorCounter")
        if link >= getattr(g, "nvlinks", 0):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        attribute = {
            pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT: "crc_per_link",
            pynvml.NVML_NVLINK_ERROR_DL_REPLAY: "link_replays_per_link",
            pynvml.NVML_NVLINK_ERROR_DL_RECOVERY: "link_recoveries_per_link",
        }[counter]
        return int(getattr(g, attribute, 0))


def _sick_h100(**kw: Any) -> FakeGpu:
    g = h100(**kw)
    g.remap = (0, 1, 1, 0)  # type: ignore[attr-defined]
    g.replays = 7  # type: ignore[attr-defined]
    g.nvlinks = 18  # type: ignore[attr-defined]
    g.crc_per_link = 2  # type: ignore[attr-defined]
    g.link_replays_per_link = 5  # type: ignore[attr-defined]
    g.link_recoveries_per_link = 1  # type: ignore[attr-defined]
    g.xids = [79]
    return g


def test_every_health_counter_is_read_and_named() -> None:
    fake = HealthFakeNvml([_sick_h100()])
    d = gpu(open_fake(fake), 0)
    s = d.snapshot(T0)
    assert (s.ecc_corrected_volatile_total, s.ecc_uncorrected_volatile_total) == (3, 0)
    assert (s.remapped_rows_correctable_total, s.remapped_rows_uncorrectable_total) == (0, 1)
    assert (s.row_remap_pending, s.row_remap_failed) == (1, 0)
    assert s.pcie_replay_total == 7
    assert s.nvlink_crc_errors_total == 18 * 2
    assert s.nvlink_replay_errors_total == 18 * 5
    assert s.nvlink_recovery_errors_total == 18 * 1
    assert (s.xid_events_total, s.xid_last) == (1, 79)


def test_health_is_read_every_few_seconds_and_repeated_in_between() -> None:
    g = _sick_h100()
    fake = HealthFakeNvml([g])
    clock = Clock()
    d = gpu(_open(fake, clock), 0)
    d.snapshot(T0)
    calls = fake.calls["nvmlDeviceGetPcieReplayCounter"]
    g.replays = 9  # type: ignore[attr-defined]
    clock.ns = S
    assert d.snapshot(T0 + S).pcie_replay_total == 7  # repeated, not re-read
    assert fake.calls["nvmlDeviceGetPcieReplayCounter"] == calls
    clock.ns = int(HEALTH_INTERVAL_S * S) + 1
    later = d.snapshot(T0 - 3600 * S)  # the wall clock stepped back: no matter
    assert later.pcie_replay_total == 9


def test_counters_a_gpu_lacks_are_absent_not_zero() -> None:
    g = a100(
        errors={
            "nvmlDeviceGetRemappedRows": pynvml.NVML_ERROR_NOT_SUPPORTED,
            "nvmlDeviceGetPcieReplayCounter": pynvml.NVML_ERROR_NOT_SUPPORTED,
        }
    )
    d = gpu(open_fake(HealthFakeNvml([g])), 0)
    s = d.snapshot(T0)
    assert s.remapped_rows_uncorrectable_total is None and s.row_remap_pending is None
    assert s.pcie_replay_total is None
    assert s.nvlink_crc_errors_total is None  # no link answered
    assert s.nvlink_replay_errors_total is None and s.nvlink_recovery_errors_total is None
    assert d.missing()["nvlink_errors"] == "no NVLink"
    assert s.ecc_uncorrected_volatile_total == 0  # offered, and zero: a real 0


def test_no_xid_yet_is_no_last_code_not_zero() -> None:
    """XID events registered and none seen: 0 events, and no last code (absent, not 0)."""
    d = gpu(open_fake(HealthFakeNvml([h100()])), 0)
    s = d.snapshot(T0)
    assert s.xid_events_total == 0 and s.xid_last is None


def test_a_counter_that_stops_answering_goes_absent() -> None:
    g = _sick_h100()
    clock = Clock()
    d = gpu(_open(HealthFakeNvml([g]), clock), 0)
    assert d.snapshot(T0).pcie_replay_total == 7
    g.errors["nvmlDeviceGetPcieReplayCounter"] = pynvml.NVML_ERROR_UNKNOWN
    clock.ns = int(HEALTH_INTERVAL_S * S) + 1
    later = d.snapshot(T0 + int(HEALTH_INTERVAL_S * S) + 1)
    assert later.pcie_replay_total is None  # not its old value
    assert later.nvlink_crc_errors_total == 36


def test_nvlink_errors_sum_every_link_that_answers_even_with_gaps() -> None:
    """Links 0–3 and 6–7 active (4 and 5 refuse): six links summed."""

    class GappyNvml(HealthFakeNvml):
        def nvmlDeviceGetNvLinkErrorCounter(  # noqa: N802
            self, handle: FakeGpu, link: int, counter: int, /
        ) -> int:
            if link in (4, 5) or link >= 8:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return 3

    d = gpu(open_fake(GappyNvml([_sick_h100()])), 0)
    assert d.snapshot(T0).nvlink_crc_errors_total == 6 * 3


def test_an_nvlink_counter_one_link_refuses_is_absent_the_others_stay() -> None:
    """Replays refused on link 7 only: a sum over 17 of 18 links would read as a drop, so the
    replay count is absent; CRC errors and recoveries still sum every link."""

    class NoReplayOnLink7(HealthFakeNvml):
        def nvmlDeviceGetNvLinkErrorCounter(  # noqa: N802
            self, handle: FakeGpu, link: int, counter: int, /
        ) -> int:
            if link == 7 and counter == pynvml.NVML_NVLINK_ERROR_DL_REPLAY:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)
            return super().nvmlDeviceGetNvLinkErrorCounter(handle, link, counter)

    s = gpu(open_fake(NoReplayOnLink7([_sick_h100()])), 0).snapshot(T0)
    assert s.nvlink_replay_errors_total is None
    assert (s.nvlink_crc_errors_total, s.nvlink_recovery_errors_total) == (18 * 2, 18 * 1)


def test_an_older_nvml_module_without_the_replay_counter_reads_only_crc() -> None:
    """An nvidia-ml-py that names only the CRC counter: replays and recoveries absent."""

    class CrcOnlyNvml(HealthFakeNvml):
        NVML_NVLINK_ERROR_DL_REPLAY = None
        NVML_NVLINK_ERROR_DL_RECOVERY = None

    s = gpu(open_fake(CrcOnlyNvml([_sick_h100()])), 0).snapshot(T0)
    assert s.nvlink_crc_errors_total == 18 * 2
    assert s.nvlink_replay_errors_total is None and s.nvlink_recovery_errors_total is None
