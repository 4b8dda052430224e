"""The HTML report: self-contained, and it renders in a real browser where one exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from coordinator.report import render
from coordinator.simulate import Simulation


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and value and "://" in value:
                self.external.append(value)


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("report") / "sim"
    result = Simulation(base, 3, echo=lambda _: None).run(2)
    return result.report_path


def test_report_is_self_contained_and_complete(report_path: Path) -> None:
    text = report_path.read_text()
    parser = _Collector()
    parser.feed(text)
    assert parser.external == []
    assert "script" not in parser.tags
    assert parser.tags.count("svg") == 6
    for title in (
        "Global accuracy per round",
        "Global loss per round",
        "Tokens per agent per round",
        "Measured quality per agent",
        "Reputation per agent",
        "Update bytes received per round",
    ):
        assert title in text
    assert 'class="ok"' in text  # the ledger verified from scratch


def test_failed_verification_is_shown() -> None:
    page = render([], {"agents": [], "checkpoint": {}}, {"ok": False, "error": "entry 3"})
    assert "FAILED: entry 3" in page


def test_report_renders_in_chromium(report_path: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine; structure is checked above")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1300,1600",
            report_path.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000  # a blank page compresses to a few KB
