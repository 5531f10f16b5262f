"""The HTML fleet report opens in a real headless browser (Debian ``chromium``) without errors:
it renders a full-size screenshot, logs nothing on the console, and every embedded figure
decodes. Skipped with a reason where Chromium is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flopwatt.analysis.registry import Registry
from flopwatt.report.files import write_report
from tests.browser_helpers import (
    PNG_MAGIC,
    find_chromium,
    open_in_chromium,
    png_size,
    with_probe,
)
from tests.report_fleet import NOW, build_fleet

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium not installed (Debian package 'chromium'); CI installs it",
)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    fleet = build_fleet(tmp / "fleet.db", registry)
    (path,) = write_report(fleet.db_path, tmp / "out", ["html"], now_unix_ns=NOW)
    return path


def test_report_renders_without_errors_and_every_figure_decodes(
    report_html: Path, tmp_path: Path
) -> None:
    # The page itself has no scripts; a probe appended to a copy reports, once the page has
    # loaded, how many images it has and how many failed to decode. Its line must be the only
    # console message: anything else (an error, a failed load) would be logged beside it.
    probed = tmp_path / "report.html"
    probed.write_text(with_probe(report_html.read_text("utf-8")), "utf-8")
    run = open_in_chromium(probed, tmp_path / "chromium", width=1400, height=2000)
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(run.console) == 1, run.console
    assert "flopwatt-probe images=4 broken=0" in run.console[0], run.console
    assert run.screenshot.startswith(PNG_MAGIC)
    assert png_size(run.screenshot) == (1400, 2000)
    # Non-trivial: a rendered page, not a blank one (a blank 1400×2000 PNG is ~10 KB).
    assert len(run.screenshot) > 50_000

    import matplotlib.image

    pixels = matplotlib.image.imread(str(tmp_path / "chromium" / "screenshot.png"))
    assert float(np.std(pixels[..., :3])) > 0.05


def test_console_errors_are_detected(tmp_path: Path) -> None:
    """The check above is not vacuous: a page that throws is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p>"
        "<script>throw new Error('deliberate');</script></body></html>",
        "utf-8",
    )
    run = open_in_chromium(page, tmp_path / "chromium", width=400, height=300)
    assert any("Uncaught Error: deliberate" in line for line in run.console), run.stderr[-2000:]
