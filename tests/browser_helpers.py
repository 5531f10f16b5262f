"""Open a local HTML file in headless Chromium (Debian package ``chromium``): a screenshot and
the page's console messages.

Chromium logs every console message — ``console.error``, uncaught exceptions ("Uncaught …"),
failed script loads — on stderr as ``…:CONSOLE:…`` lines when run with
``--enable-logging=stderr --v=0``; :attr:`BrowserRun.console` collects them. A page without
scripts logs none. Its other stderr noise (no D-Bus, no GPU in a container) is ignored.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


@dataclass(frozen=True)
class BrowserRun:
    """What one headless Chromium run produced."""

    returncode: int
    screenshot: bytes
    """PNG bytes ("" when the run wrote none)."""
    console: tuple[str, ...]
    """Console messages the page logged (errors included), as Chromium printed them."""
    stderr: str


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk.

    Raises:
        ValueError: not a PNG.
    """
    if not png.startswith(PNG_MAGIC) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def open_in_chromium(
    page: Path,
    work_dir: Path,
    *,
    width: int = 1400,
    height: int = 2000,
    timeout_s: float = 90.0,
    chromium: str | None = None,
) -> BrowserRun:
    """Load ``page`` (a local file) in headless Chromium, screenshot it and collect console
    messages. Networking, sync and updates are off; the profile lives under ``work_dir``.

    Raises:
        FileNotFoundError: Chromium is not installed.
        subprocess.TimeoutExpired: the browser did not finish within ``timeout_s`` (it is
            killed with its process group first).
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed (Debian package 'chromium')")
    work_dir.mkdir(parents=True, exist_ok=True)
    shot = work_dir / "screenshot.png"
    shot.unlink(missing_ok=True)
    args = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={work_dir / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        "--enable-logging=stderr",
        "--v=0",
        page.resolve().as_uri(),
    ]
    env = {**os.environ, "HOME": str(work_dir)}
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        _out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # Chromium forks helpers; end the whole group this call started.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    console = tuple(line for line in err.splitlines() if ":CONSOLE" in line)
    return BrowserRun(
        returncode=proc.returncode,
        screenshot=shot.read_bytes() if shot.exists() else b"",
        console=console,
        stderr=err,
    )


#: Appended to a copy of a page: logs how many images loaded and how many are broken.
IMAGE_PROBE = (
    "<script>window.addEventListener('load', () => {"
    "const imgs = Array.from(document.images);"
    "const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;"
    "console.log('flopwatt-probe images=' + imgs.length + ' broken=' + broken);"
    "});</script>"
)


def with_probe(html_text: str, probe: str = IMAGE_PROBE) -> str:
    """``html_text`` with ``probe`` inserted just before ``</body>``."""
    head, sep, tail = html_text.rpartition("</body>")
    if not sep:
        raise ValueError("no </body> in the page")
    return head + probe + sep + tail
