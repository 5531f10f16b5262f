"""The wire contract is the ``.proto`` alone: a client built only from ``proto/flopwatt/v1`` (fresh
``grpc_tools.protoc`` output, no flopwatt code importable) registers, streams telemetry and a GEMM
result to a real collector, and gets the acks the contract promises; the collector stores it all.

The client runs in a subprocess with ``-I -S`` and an explicit ``sys.path`` of the freshly
generated code, the standard library and site-packages only, so neither the repository nor the
editable install of flopwatt (its ``.pth`` meta-path finder) can supply a module; the script
asserts that before it connects.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flopwatt.store.chunks import unpack_chunk
from tests.collector_helpers import collector

REPO = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO / "proto" / "flopwatt" / "v1"
H100_SKU = "H100-SXM5-80GB"

CLIENT = r'''
"""A flopwatt agent written from the .proto only."""
import importlib.util
import json
import os
import queue
import struct
import sys
import time

GEN, SITE_DIRS, REPO, TARGET, EPOCH = (
    sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
)
sys.path[:] = [GEN, *sys.path, *SITE_DIRS]

import grpc  # noqa: E402

import flopwatt  # noqa: E402
import flopwatt.v1  # noqa: E402
from flopwatt.v1 import agent_pb2, agent_pb2_grpc, common_pb2, jobs_pb2  # noqa: E402

# --- the client must be built from the fresh protoc output and nothing else ----------------
gen = os.path.realpath(GEN) + os.sep
modules = {m.__name__: m.__file__ for m in (flopwatt, flopwatt.v1, agent_pb2, agent_pb2_grpc,
                                            common_pb2, jobs_pb2)}
for name, path in modules.items():
    assert path and os.path.realpath(path).startswith(gen), (name, path, gen)
assert list(flopwatt.__path__) == [os.path.join(GEN, "flopwatt")], flopwatt.__path__
for name in ("flopwatt.wire", "flopwatt.records", "flopwatt.collector", "tests"):
    assert importlib.util.find_spec(name) is None, f"{name} importable from {GEN}"
assert not any("editable" in str(getattr(f, "__module__", "")) + type(f).__module__
               for f in sys.meta_path), sys.meta_path
assert os.path.realpath(REPO) not in {os.path.realpath(p) for p in sys.path}, sys.path
assert os.path.realpath(os.getcwd()) != os.path.realpath(REPO)

HOST, UUID = "contract-node", "GPU-c0ffee00-0000-4000-8000-000000000001"
N, BATCHES = 10, 3
out = {"modules": modules, "sys_path": sys.path}

channel = grpc.insecure_channel(TARGET)
grpc.channel_ready_future(channel).result(timeout=10)
stub = agent_pb2_grpc.AgentServiceStub(channel)
device = common_pb2.DeviceInfo(
    uuid=UUID, index=0, name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:17:00.0",
    pci_device_id=0x233010DE, memory_total_bytes=85_520_809_984, kind=common_pb2.DEVICE_KIND_GPU,
    power_limit_enforced_w=700.0, sm_clock_max_mhz=1980, torch_index=0,
    capabilities=common_pb2.DeviceCapabilities(
        energy_counter=True, power_instant=True, throttle_reasons=True, clocks=True),
)
try:
    reply = stub.Register(agent_pb2.RegisterRequest(
        node=common_pb2.NodeInfo(hostname=HOST, agent_version="contract-client/1",
                                 device_backend="nvml",
                                 software=common_pb2.SoftwareVersions(driver_version="570.1")),
        devices=[device], epoch=EPOCH), timeout=10)
except grpc.RpcError as exc:
    out["register_error"] = [exc.code().name, exc.details()]
    print(json.dumps(out))
    sys.exit(0)
out["register"] = {"agent_id": reply.agent_id,
                   "sample_interval_s": reply.settings.sample_interval_s,
                   "batch_interval_s": reply.settings.batch_interval_s}

sent = queue.Queue()


def requests():
    while True:
        m = sent.get()
        if m is None:
            return
        yield m


call = stub.Stream(requests(), timeout=30)
sent.put(agent_pb2.AgentMessage(hello=agent_pb2.StreamHello(agent_id=reply.agent_id,
                                                            epoch=EPOCH)))
t0 = time.time_ns()
powers = []
for seq in range(1, BATCHES + 1):
    m = agent_pb2.AgentMessage(epoch=EPOCH, sequence=seq)
    s = m.telemetry.series.add(device_uuid=UUID)
    ks = [(seq - 1) * N + i for i in range(N)]
    # Columns are packed little-endian arrays, as the .proto documents: plain struct will do.
    s.timestamp_unix_ns = struct.pack(f"<{N}q", *(t0 + k * 100_000_000 for k in ks))
    s.power_instant_w = struct.pack(f"<{N}d", *(250.0 + k for k in ks))
    s.energy_j = struct.pack(f"<{N}d", *(25.0 * k for k in ks))
    s.sm_clock_mhz = struct.pack(f"<{N}I", *([1980] * N))
    s.gpu_temperature_c = struct.pack(f"<{N}f", *([60.5] * N))
    s.throttle_reasons = struct.pack(f"<{N}Q", *(0x4 if k % 2 else 0 for k in ks))
    powers.extend(250.0 + k for k in ks)
    sent.put(m)
now = time.time_ns()
sent.put(agent_pb2.AgentMessage(epoch=EPOCH, sequence=BATCHES + 1, job_result=jobs_pb2.JobResult(
    job_id="contract-job", device_uuid=UUID, started_unix_ns=now - 31 * 10**9,
    finished_unix_ns=now,
    conditions=common_pb2.Conditions(power_limit_w=700.0, energy_j=19_500.0, mean_power_w=650.0,
                                     energy_from_counter=True, window_s=30.0),
    gemm=jobs_pb2.GemmResult(
        precision="bf16", backend="cublas", burst_flops_per_s=790e12,
        best_shape=jobs_pb2.GemmShape(m=8192, n=8192, k=8192),
        sweep=[jobs_pb2.GemmPoint(shape=jobs_pb2.GemmShape(m=8192, n=8192, k=8192),
                                  best_s=1.39e-3, median_s=1.41e-3, best_flops_per_s=790e12)],
        sustained_flops_per_s=700e12, sustained_s=30.0, sustained_flops=700e12 * 30,
        energy_j=19_500.0, energy_per_flop_j=19_500.0 / (700e12 * 30), mean_power_w=650.0,
        measured_unix_ns=now),
)))
last = BATCHES + 1
acks, commands, closing = [], [], False
try:
    for reply_msg in call:
        which = reply_msg.WhichOneof("payload")
        if which == "ack":
            acks.append([reply_msg.ack.epoch, reply_msg.ack.committed_through])
            if reply_msg.ack.epoch == EPOCH and reply_msg.ack.committed_through >= last \
                    and not closing:
                closing = True
                sent.put(None)  # half-close: the collector finishes acking and ends with OK
        else:
            commands.append(which)
    out["code"] = call.code().name
except grpc.RpcError as exc:
    out["code"], out["details"] = exc.code().name, exc.details()
out.update(acks=acks, commands=commands, powers=powers, hostname=HOST, uuid=UUID,
           samples=N * BATCHES)
channel.close()
print(json.dumps(out))
'''


def _site_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``proto/flopwatt/v1/*.proto`` copied out and compiled afresh: returns the output root."""
    root = tmp_path_factory.mktemp("contract")
    protos = sorted(PROTO_DIR.glob("*.proto"))
    assert protos, PROTO_DIR
    dest = root / "proto" / "flopwatt" / "v1"
    dest.mkdir(parents=True)
    for p in protos:
        shutil.copy2(p, dest / p.name)
    gen = root / "gen"
    gen.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            *(f"flopwatt/v1/{p.name}" for p in protos),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    package = gen / "flopwatt" / "v1"
    for p in protos:
        assert (package / f"{p.stem}_pb2.py").is_file()
        assert (package / f"{p.stem}_pb2_grpc.py").is_file()
    # Regular packages, so ``flopwatt`` resolves to this tree with a real ``__file__``.
    (gen / "flopwatt" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    return gen


async def _run_client(gen: Path, cwd: Path, target: str, epoch: int) -> dict[str, Any]:
    cwd.mkdir()
    script = cwd / "client.py"
    script.write_text(CLIENT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # no PYTHONPATH, no user site, no script directory on sys.path
        "-S",  # no site: the editable install's .pth finder is never installed
        str(script),
        str(gen),
        json.dumps(_site_dirs()),
        str(REPO),
        target,
        str(epoch),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def _query(db: Path, sql: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_proto_copy_is_complete_and_self_contained(generated: Path) -> None:
    """Every import in the .proto files names a file of the same directory (nothing outside
    ``proto/`` is needed to build a client)."""
    names = {p.name for p in PROTO_DIR.glob("*.proto")}
    for p in PROTO_DIR.glob("*.proto"):
        for line in p.read_text().splitlines():
            if line.startswith("import "):
                target = line.split('"')[1]
                assert target.startswith("flopwatt/v1/"), (p.name, target)
                assert target.removeprefix("flopwatt/v1/") in names, (p.name, target)
    assert {p.name for p in (generated / "flopwatt" / "v1").glob("*_pb2.py")} == {
        n.replace(".proto", "_pb2.py") for n in names
    }


@pytest.mark.parametrize(
    "epoch",
    [0x1234_5678_9ABC_DEF0, 0xF123_4567_89AB_CDEF],
    ids=["epoch-below-2^63", "epoch-top-bit-set"],
)
async def test_client_from_proto_only(generated: Path, tmp_path: Path, epoch: int) -> None:
    """The contract: epoch is a random fixed64, so a client may use all 64 bits."""
    db = tmp_path / "collector.db"
    async with collector(tmp_path, db_path=db) as c:
        out = await _run_client(generated, tmp_path / "client", c.grpc_address, epoch)
    gen = str(generated.resolve())
    assert all(path.startswith(gen) for path in out["modules"].values()), out["modules"]
    assert "register_error" not in out, f"Register failed: {out.get('register_error')}"
    host, uuid, last = out["hostname"], out["uuid"], 4

    assert out["register"] == {
        "agent_id": host,
        "sample_interval_s": pytest.approx(0.1),
        "batch_interval_s": pytest.approx(1.0),
    }
    assert out["code"] == "OK", out
    acks = out["acks"]
    assert acks[0] == [epoch, 0], "the hello is answered with the epoch's committed point"
    assert acks[-1] == [epoch, last]
    assert all(e == epoch for e, _ in acks)
    assert [n for _, n in acks] == sorted(n for _, n in acks), "acks never go backwards"
    assert out["commands"] == []

    rows = _query(db, "SELECT agent_id, epoch, sequence, kind, status FROM messages")
    # Compared modulo 2**64: the store may keep a fixed64 as SQLite's signed INTEGER.
    assert sorted((r[0], r[1] % 2**64, *r[2:]) for r in rows) == [
        (host, epoch, 1, "telemetry", "stored"),
        (host, epoch, 2, "telemetry", "stored"),
        (host, epoch, 3, "telemetry", "stored"),
        (host, epoch, 4, "job_result", "stored"),
    ]
    chunks = _query(
        db,
        "SELECT device_uuid, n_samples, data FROM telemetry_chunks ORDER BY sequence, chunk_index",
    )
    assert [r["device_uuid"] for r in chunks] == [uuid] * 3
    assert sum(r["n_samples"] for r in chunks) == out["samples"] == 30
    decoded = [unpack_chunk(r["data"])[1] for r in chunks]
    powers = np.concatenate([cols["power_instant_w"] for cols in decoded])
    assert powers.tolist() == out["powers"]
    assert all("power_average_1s_w" not in cols for cols in decoded), "absent stays absent"
    throttle = np.concatenate([cols["throttle_reasons"] for cols in decoded])
    assert throttle.tolist() == [0x4 if k % 2 else 0 for k in range(30)]

    results = _query(db, "SELECT * FROM job_results")
    assert len(results) == 1
    r = results[0]
    assert (r["job_id"], r["device_uuid"], r["kind"], r["precision"]) == (
        "contract-job",
        uuid,
        "gemm",
        "bf16",
    )
    assert r["burst_flops_per_s"] == 790e12
    assert r["sustained_flops_per_s"] == 700e12
    assert r["mean_power_w"] == 650.0
    assert r["simulated"] == 0

    comps = _query(db, "SELECT * FROM comparisons")
    assert len(comps) == 1
    comp = comps[0]
    assert (comp["agent_id"], comp["epoch"] % 2**64, comp["sequence"]) == (host, epoch, last)
    assert comp["sku"] == H100_SKU and comp["precision"] == "bf16"
    assert comp["sustained_over_spec_ratio"] == pytest.approx(
        700e12 / comp["spec_peak_flops_per_s"]
    )
    assert comp["measured_energy_per_flop_j"] == pytest.approx(650 / 700e12, rel=1e-6, abs=0)

    devices = _query(db, "SELECT device_uuid, agent_id, sku, sku_match FROM devices")
    assert [tuple(d) for d in devices] == [(uuid, host, H100_SKU, "pci_device_id")]
