#!/usr/bin/env python3
"""Generate the protobuf packages (messages, .pyi stubs, gRPC stubs) from ``proto/``.

Two packages, each from one directory of ``.proto`` files whose path mirrors the package path:

- ``flopwatt/v1`` from ``proto/flopwatt/v1/*.proto``: flopwatt's own wire contract;
- ``flopwatt/podresources/v1`` from ``proto/flopwatt/podresources/v1/*.proto``: the vendored
  subset of the kubelet's pod-resources API (protobuf package ``v1``, as the kubelet serves it).

The generated modules import each other as ``from flopwatt.v1 import common_pb2``. The output is
committed; ``--check`` regenerates into a temporary directory and fails when the committed files
of either package differ or a committed file is no longer generated (CI runs it through the
tests).

Usage: python scripts/gen_proto.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


@dataclass(frozen=True)
class Package:
    """One generated package: its .proto files live at ``proto/<out>``, its code at ``<out>``."""

    out: Path
    init_text: str

    @property
    def proto_dir(self) -> Path:
        return PROTO_ROOT / self.out


PACKAGES = (
    Package(
        Path("flopwatt") / "v1",
        '"""Generated protobuf and gRPC code for package flopwatt.v1. Never edit by hand: run\n'
        '``python scripts/gen_proto.py``."""\n',
    ),
    Package(
        Path("flopwatt") / "podresources" / "v1",
        '"""Generated protobuf and gRPC code for the kubelet pod-resources API (package v1).\n'
        'Never edit by hand: run ``python scripts/gen_proto.py``."""\n',
    ),
)


def generate_package(package: Package, out_root: Path) -> list[Path]:
    """Generate ``package`` into ``out_root``; return its generated files (relative paths)."""
    from grpc_tools import protoc

    protos = sorted(package.proto_dir.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {package.proto_dir}")
    well_known = str(resources.files("grpc_tools") / "_proto")
    (out_root / package.out).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    (out_root / package.out / "__init__.py").write_text(package.init_text)
    return sorted(p.relative_to(out_root) for p in (out_root / package.out).glob("*.py*"))


def generate(out_root: Path) -> list[Path]:
    """Generate every package into ``out_root``; return the generated files (relative paths)."""
    return [rel for package in PACKAGES for rel in generate_package(package, out_root)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    if not args.check:
        for package in PACKAGES:
            files = generate_package(package, ROOT)
            print(f"generated {len(files)} files in {package.out}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            str(rel)
            for rel in fresh
            if not (ROOT / rel).exists()
            or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, shallow=False)
        ]
        committed = {
            p.relative_to(ROOT) for package in PACKAGES for p in (ROOT / package.out).glob("*.py*")
        }
        extra = sorted(str(p) for p in committed - set(fresh))
    if stale or extra:
        print("generated code is stale; run: python scripts/gen_proto.py", file=sys.stderr)
        for name in stale:
            print(f"  differs: {name}", file=sys.stderr)
        for name in extra:
            print(f"  not generated from any .proto: {name}", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
