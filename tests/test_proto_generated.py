"""The committed ``flopwatt/v1`` and ``flopwatt/podresources/v1`` are exactly what
``scripts/gen_proto.py`` makes from ``proto/flopwatt/v1/*.proto`` and
``proto/flopwatt/podresources/v1/*.proto``, and ``--check`` notices when they are not.

The negative cases run the script in a copy of the layout it expects (``ROOT`` is the script's
parent's parent: ``scripts/``, ``proto/``, ``flopwatt/v1/``, ``flopwatt/podresources/v1/``), so
the repository is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path("scripts") / "gen_proto.py"
GENERATED = Path("flopwatt") / "v1"
PODRESOURCES = Path("flopwatt") / "podresources" / "v1"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_generated_code_is_up_to_date() -> None:
    result = _check(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """A copy of what the script reads: itself, the .proto tree and the committed output."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / SCRIPT, root / SCRIPT)
    shutil.copytree(REPO / "proto", root / "proto")
    for generated in (GENERATED, PODRESOURCES):
        shutil.copytree(
            REPO / generated, root / generated, ignore=shutil.ignore_patterns("__pycache__")
        )
    return root


def test_check_passes_in_an_unmodified_copy(layout: Path) -> None:
    """The copied layout is faithful, so the failures below come from the edits alone."""
    result = _check(layout)
    assert result.returncode == 0, result.stdout + result.stderr


def _add_field(root: Path) -> None:
    proto = root / "proto" / "flopwatt" / "v1" / "agent.proto"
    text = proto.read_text()
    old = "  int64 sent_unix_ns = 1;\n"
    assert old in text
    proto.write_text(text.replace(old, old + "  uint32 extra_field = 2;\n"))


def _add_message_file(root: Path) -> None:
    (root / "proto" / "flopwatt" / "v1" / "extra.proto").write_text(
        'syntax = "proto3";\npackage flopwatt.v1;\nmessage Extra { string note = 1; }\n'
    )


def _stale_extra_file(root: Path) -> None:
    (root / GENERATED / "removed_pb2.py").write_text("# left over from a deleted .proto\n")


def _hand_edit(root: Path) -> None:
    path = root / GENERATED / "jobs_pb2.pyi"
    path.write_text(path.read_text() + "\n# edited by hand\n")


def _podresources_hand_edit(root: Path) -> None:
    path = root / PODRESOURCES / "api_pb2_grpc.py"
    path.write_text(path.read_text() + "\n# edited by hand\n")


def _podresources_extra_file(root: Path) -> None:
    (root / PODRESOURCES / "old_pb2.py").write_text("# left over from a deleted .proto\n")


def _generated_bytes(root: Path) -> dict[Path, bytes]:
    return {
        p: p.read_bytes()
        for generated in (GENERATED, PODRESOURCES)
        for p in (root / generated).iterdir()
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("edit", "expect"),
    [
        (_add_field, "differs: flopwatt/v1/agent_pb2.py"),
        (_add_message_file, "differs: flopwatt/v1/extra_pb2.py"),
        (_stale_extra_file, "not generated from any .proto: flopwatt/v1/removed_pb2.py"),
        (_hand_edit, "differs: flopwatt/v1/jobs_pb2.pyi"),
        (_podresources_hand_edit, "differs: flopwatt/podresources/v1/api_pb2_grpc.py"),
        (
            _podresources_extra_file,
            "not generated from any .proto: flopwatt/podresources/v1/old_pb2.py",
        ),
    ],
    ids=[
        "field-added",
        "proto-file-added",
        "stale-generated-file",
        "hand-edited-stub",
        "podresources-hand-edited",
        "podresources-stale-file",
    ],
)
def test_check_fails_when_generated_code_is_stale(
    layout: Path, edit: Callable[[Path], None], expect: str
) -> None:
    edit(layout)
    before = _generated_bytes(layout)
    result = _check(layout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "generated code is stale" in result.stderr
    assert expect in result.stderr, result.stderr
    # --check only reports: it never rewrites the committed files.
    after = _generated_bytes(layout)
    assert after == before
