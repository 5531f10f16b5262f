#!/usr/bin/env python3
"""Generate ``flopwatt/v1`` (messages, .pyi stubs, gRPC stubs) from ``proto/flopwatt/v1/*.proto``.

The .proto path mirrors the package path, so the generated modules import each other as
``from flopwatt.v1 import common_pb2``. The output is committed; ``--check`` regenerates into a
temporary directory and fails when the committed files differ (CI runs it through the tests).

Usage: python scripts/gen_proto.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "flopwatt" / "v1"
OUT_PACKAGE = Path("flopwatt") / "v1"
INIT_TEXT = (
    '"""Generated protobuf and gRPC code for package flopwatt.v1. Never edit by hand: run\n'
    '``python scripts/gen_proto.py``."""\n'
)


def generate(out_root: Path) -> list[Path]:
    """Generate into ``out_root/flopwatt/v1``; return the generated files (relative paths)."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    well_known = str(resources.files("grpc_tools") / "_proto")
    (out_root / OUT_PACKAGE).mkdir(parents=True, exist_ok=True)
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
    (out_root / OUT_PACKAGE / "__init__.py").write_text(INIT_TEXT)
    return sorted(p.relative_to(out_root) for p in (out_root / OUT_PACKAGE).glob("*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    args = parser.parse_args()
    if not args.check:
        files = generate(ROOT)
        print(f"generated {len(files)} files in {OUT_PACKAGE}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            str(rel)
            for rel in fresh
            if not (ROOT / rel).exists()
            or not filecmp.cmp(Path(tmp) / rel, ROOT / rel, shallow=False)
        ]
        committed = {p.relative_to(ROOT) for p in (ROOT / OUT_PACKAGE).glob("*.py*")}
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
