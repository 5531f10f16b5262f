"""A collector that cannot start says why in one line and exits 1 — not a usage error with
"Try --help" (the command line was fine) and not a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path


def test_a_taken_http_port_is_a_one_line_start_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "flopwatt",
                "collector",
                "--db",
                str(tmp_path / "c.db"),
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 1, proc.stderr
    assert "Error: cannot start the collector:" in proc.stderr
    assert str(port) in proc.stderr
    assert "Usage:" not in proc.stderr and "--help" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unreachable_postgres_store_is_a_one_line_start_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flopwatt",
            "collector",
            "--db",
            "postgresql://nobody:secret@127.0.0.1:1/none",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "cannot open the store postgresql://nobody@127.0.0.1:1/none" in proc.stderr
    assert "secret" not in proc.stderr  # the password is never printed
    assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr
