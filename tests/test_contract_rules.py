"""Every rule the ``.proto`` documents, checked by a client built from the ``.proto`` alone.

The client runs in a subprocess on freshly generated code (see ``test_contract_client.py``: no
flopwatt module can be imported there) against a real collector, walks through the documented
rules one by one and prints what it saw as JSON; this test checks each observation against
what the comments in ``proto/flopwatt/v1`` promise:

* a Stream before Register is FAILED_PRECONDITION;
* RegisterResponse names the message limit; a message over it is RESOURCE_EXHAUSTED and not
  consumed, and a ``dropped`` tombstone ("too large") with the same sequence takes its place;
* samples outside the documented bounds are left out and reported in a ``Rejection`` (with
  reason and count) before the Ack that covers them; a series for an unregistered device is
  rejected alone; a job result for an unregistered device is consumed as rejected; the stream
  goes on after each;
* energy below the previous accepted value of the epoch is ``energy_decreasing``;
* a resend of a consumed sequence is acked again (a duplicate); a gap ends the stream with
  FAILED_PRECONDITION naming the expected sequence, and the next hello's Ack says where to
  resume; heartbeats and tombstones take sequences;
* a job stays RUNNING after its results until the agent's JobStatus(SUCCEEDED).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from tests.collector_helpers import collector
from tests.test_contract_client import REPO, _site_dirs, generated  # noqa: F401 (fixture)

LIMIT = 256 * 1024

CLIENT = r'''
"""Walks the documented rules of the flopwatt contract, from the generated code only."""
import json
import os
import queue
import struct
import sys
import threading
import time

GEN, SITE_DIRS, TARGET, EPOCH = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
sys.path[:] = [GEN, *sys.path, *SITE_DIRS]

import grpc  # noqa: E402

from flopwatt.v1 import (  # noqa: E402
    admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, common_pb2, jobs_pb2,
)

gen = os.path.realpath(GEN) + os.sep
assert os.path.realpath(agent_pb2.__file__).startswith(gen)

HOST, UUID, OTHER = "rules-node", "GPU-rules-0", "GPU-not-registered"
out = {}
channel = grpc.insecure_channel(TARGET)
grpc.channel_ready_future(channel).result(timeout=10)
stub = agent_pb2_grpc.AgentServiceStub(channel)
admin = admin_pb2_grpc.AdminServiceStub(channel)


class Stream:
    """A stream with a queue of messages to send and everything received recorded."""

    def __init__(self):
        self.q = queue.Queue()
        self.acks, self.rejections, self.commands = [], [], []
        self.code = self.details = None
        self.call = stub.Stream(iter(self.q.get, None))
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self):
        try:
            for m in self.call:
                kind = m.WhichOneof("payload")
                if kind == "ack":
                    self.acks.append(m.ack.committed_through)
                elif kind == "rejection":
                    r = m.rejection
                    self.rejections.append({
                        "sequence": r.sequence, "ack_seen_before": max(self.acks, default=0),
                        "message_rejected": r.message_rejected, "detail": r.detail,
                        "samples": sorted([s.device_uuid, s.reason, s.samples] for s in r.samples),
                    })
                else:
                    self.commands.append(m.command)
            self.code = "OK"
        except grpc.RpcError as exc:
            self.code, self.details = exc.code().name, exc.details()

    def send(self, *messages):
        for m in messages:
            self.q.put(m)

    def wait_ack(self, n, timeout=15):
        deadline = time.time() + timeout
        while max(self.acks, default=-1) < n and self.code is None and time.time() < deadline:
            time.sleep(0.02)
        return max(self.acks, default=-1)

    def end(self, timeout=15):
        self.thread.join(timeout)
        return self.code, self.details

    def close(self):
        self.q.put(None)
        return self.end()


def hello():
    return agent_pb2.AgentMessage(hello=agent_pb2.StreamHello(agent_id=HOST, epoch=EPOCH))


def pack(fmt, values):
    return struct.pack(f"<{len(values)}{fmt}", *values)


T0 = time.time_ns() - 60 * 10**9


def telemetry(seq, uuid=UUID, n=10, temps=None, stamps=None, energy=None):
    m = agent_pb2.AgentMessage(epoch=EPOCH, sequence=seq)
    s = m.telemetry.series.add(device_uuid=uuid)
    ks = [(seq - 1) * n + i for i in range(n)]
    s.timestamp_unix_ns = pack("q", stamps or [T0 + k * 10**8 for k in ks])
    s.power_instant_w = pack("d", [300.0] * n)
    s.energy_j = pack("d", energy or [30.0 * k for k in ks])
    s.gpu_temperature_c = pack("f", temps or [60.0] * n)
    return m


# 1. A hello before Register.
s = Stream()
s.send(hello())
out["before_register"] = list(s.end())

# 2. Register: the limit is in the answer.
reply = stub.Register(agent_pb2.RegisterRequest(
    node=common_pb2.NodeInfo(hostname=HOST, agent_version="rules/1", device_backend="nvml"),
    devices=[common_pb2.DeviceInfo(
        uuid=UUID, index=0, name="NVIDIA H100 80GB HBM3", pci_device_id=0x233010DE,
        memory_total_bytes=85_520_809_984, kind=common_pb2.DEVICE_KIND_GPU,
        power_limit_enforced_w=700.0, sm_clock_max_mhz=1980)],
    epoch=EPOCH), timeout=10)
out["max_message_bytes"] = reply.max_message_bytes

# 3. Bounds, per series and per sample, and unusable messages: consumed, reported, stream on.
s = Stream()
s.send(hello())
temps = [60.0] * 10
temps[2] = 10_000.0
stamps = [T0 + (10 + i) * 10**8 for i in range(10)]
stamps[4] = time.time_ns() + 20 * 60 * 10**9
two = telemetry(2, temps=temps, stamps=stamps)
three = telemetry(3)
three.telemetry.series.append(telemetry(3, uuid=OTHER).telemetry.series[0])
result_for_other = agent_pb2.AgentMessage(
    epoch=EPOCH, sequence=4, job_result=jobs_pb2.JobResult(
        job_id="x", device_uuid=OTHER,
        gemm=jobs_pb2.GemmResult(precision="bf16", burst_flops_per_s=1.0)))
beat = agent_pb2.AgentMessage(epoch=EPOCH, sequence=5,
                              heartbeat=agent_pb2.Heartbeat(sent_unix_ns=time.time_ns()))
big = telemetry(6, n=40_000)
s.send(telemetry(1), two, three, result_for_other, beat)
out["acked_before_oversized"] = s.wait_ack(5)
s.send(big)
out["oversized_size"] = big.ByteSize()
out["oversized"] = list(s.end())
out["rejections"] = s.rejections
out["acks_first_stream"] = s.acks

# 4. Reconnect: the hello's ack says 5 (6 was not consumed); a tombstone takes 6; a resend is
#    re-acked; energy going down is rejected; a gap ends the stream naming what was expected.
s = Stream()
s.send(hello())
out["hello_ack_after_oversized"] = s.wait_ack(0) if s.acks else s.wait_ack(5)
s.send(agent_pb2.AgentMessage(epoch=EPOCH, sequence=6, dropped=agent_pb2.Dropped(
    reason="too large", samples=40_000, original_kind="telemetry")))
out["ack_after_tombstone"] = s.wait_ack(6)
s.send(beat)  # 5 again: a duplicate, acked again
time.sleep(0.5)
s.send(telemetry(7, energy=[1.0] * 10))  # below the 30 J × k already accepted
out["ack_after_energy"] = s.wait_ack(7)
s.send(telemetry(9))
out["gap"] = list(s.end())
out["second_stream_acks"] = s.acks
out["second_stream_rejections"] = s.rejections
s = Stream()
s.send(hello())
out["resume_at"] = s.wait_ack(7)
s.close()

# 5. A job: RUNNING after its results until JobStatus(SUCCEEDED).
s = Stream()
s.send(hello())
s.wait_ack(7)
job = admin.RunJob(admin_pb2.RunJobRequest(
    selector=admin_pb2.AgentSelector(hostnames=[HOST]),
    spec=jobs_pb2.JobSpec(gemm=jobs_pb2.GemmJobSpec(precisions=["bf16"]))), timeout=10)
deadline = time.time() + 10
while not s.commands and time.time() < deadline:
    time.sleep(0.05)
command = s.commands[0]
job_id = command.run_job.job_id
first = admin.GetJob(admin_pb2.GetJobRequest(job_id=job_id))
states = [jobs_pb2.JobState.Name(first.targets[0].state)]
now = time.time_ns()
s.send(agent_pb2.AgentMessage(epoch=EPOCH, sequence=8, job_status=jobs_pb2.JobStatus(
           job_id=job_id, state=jobs_pb2.JOB_STATE_RUNNING)),
       agent_pb2.AgentMessage(epoch=EPOCH, sequence=9, job_result=jobs_pb2.JobResult(
           job_id=job_id, device_uuid=UUID, started_unix_ns=now - 10**9, finished_unix_ns=now,
           gemm=jobs_pb2.GemmResult(precision="bf16", backend="cublas",
                                    burst_flops_per_s=700e12))))
s.wait_ack(9)
info = admin.GetJob(admin_pb2.GetJobRequest(job_id=job_id))
states.append(jobs_pb2.JobState.Name(info.targets[0].state))
results_before = info.targets[0].results
s.send(agent_pb2.AgentMessage(epoch=EPOCH, sequence=10, job_status=jobs_pb2.JobStatus(
    job_id=job_id, state=jobs_pb2.JOB_STATE_SUCCEEDED, message="1 result")))
s.wait_ack(10)
info = admin.GetJob(admin_pb2.GetJobRequest(job_id=job_id))
states.append(jobs_pb2.JobState.Name(info.targets[0].state))
out["job"] = {"states": states, "results": results_before, "finished": info.finished}
s.close()
print(json.dumps(out))
'''


async def _run(gen: Path, cwd: Path, target: str, epoch: int) -> dict[str, Any]:
    cwd.mkdir()
    script = cwd / "rules.py"
    script.write_text(CLIENT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        str(script),
        str(gen),
        json.dumps(_site_dirs()),
        target,
        str(epoch),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_documented_rules_hold_for_a_client_built_from_the_proto(
    generated: Path,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    epoch = 0xFEED_0000_0000_0001
    async with collector(tmp_path, max_message_bytes=LIMIT) as c:
        out = await _run(generated, tmp_path / "client", c.grpc_address, epoch)
        stored = {
            r["sequence"]: (r["kind"], r["status"], r["samples"])
            for r in c.store.query("SELECT sequence, kind, status, samples FROM messages")
        }
    assert REPO.is_dir()
    assert out["before_register"][0] == "FAILED_PRECONDITION"
    assert out["max_message_bytes"] == LIMIT

    # Bounds: each rejection names its sequence, reasons and counts, and comes before the
    # Ack that covers it; the stream went on after each.
    by_seq = {r["sequence"]: r for r in out["rejections"]}
    assert sorted(by_seq) == [2, 3, 4]
    assert by_seq[2]["samples"] == [
        ["GPU-rules-0", "temperature_out_of_range", 1],
        ["GPU-rules-0", "timestamp_future", 1],
    ]
    assert by_seq[3]["samples"] == [["GPU-not-registered", "unregistered_device", 10]]
    assert by_seq[4]["message_rejected"] and "not registered" in by_seq[4]["detail"]
    assert all(r["ack_seen_before"] < r["sequence"] for r in out["rejections"])
    assert out["acked_before_oversized"] == 5

    # The oversized message: RESOURCE_EXHAUSTED, not consumed; the tombstone takes its place.
    assert out["oversized_size"] > LIMIT
    assert out["oversized"][0] == "RESOURCE_EXHAUSTED"
    assert out["hello_ack_after_oversized"] == 5
    assert out["ack_after_tombstone"] == 6
    assert stored[6] == ("dropped", "stored", 40_000)

    # Energy going down within the epoch; the resend of 5 was re-acked (no rejection for it).
    assert out["ack_after_energy"] == 7
    [energy] = out["second_stream_rejections"]
    assert (energy["sequence"], energy["samples"]) == (
        7,
        [["GPU-rules-0", "energy_decreasing", 10]],
    )
    assert out["gap"][0] == "FAILED_PRECONDITION" and "expected 8" in out["gap"][1]
    assert out["resume_at"] == 7

    # Stored as documented: good samples kept, rejected ones counted, heartbeats sequenced.
    assert stored[1] == ("telemetry", "stored", 10)
    assert stored[2] == ("telemetry", "stored", 8)
    assert stored[3] == ("telemetry", "stored", 10)
    assert stored[4][1] == "rejected"
    assert stored[5] == ("heartbeat", "stored", 0)
    assert stored[7] == ("telemetry", "stored", 0)

    # A job stays RUNNING after its result until the agent says SUCCEEDED.
    assert out["job"]["states"] == [
        "JOB_STATE_DELIVERED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]
    assert out["job"]["results"] == 1
    assert out["job"]["finished"]
