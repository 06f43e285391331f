"""Browser tests: Debian's chromium (installed here with apt-get when running as root,
else the tests are skipped naming the package), Playwright's sync API, and the whole
system as a user starts it (``duplexvoice up``: a Piper worker, Whisper, echo
replies), once per module, restartable on the same port for the dropped-connection
test."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from duplexvoice.wire.ports import free_port
from tests.support.browser import find_chromium
from tests.support.up_process import BANNER, READY, UpProcess

_INSTALL_TRIED: list[bool] = []


def _install_chromium() -> None:
    if _INSTALL_TRIED:
        return
    _INSTALL_TRIED.append(True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        _install_chromium()
        path = find_chromium()
    if path is None:
        pytest.skip("browser tests need Debian's chromium package: apt-get install chromium")
    return path


@pytest.fixture(scope="module")
def playwright(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


class System:
    """``duplexvoice up`` on a fixed port, so a restarted one is found by the pages."""

    def __init__(self) -> None:
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}/"
        self.up: UpProcess | None = None
        self.start()

    def start(self) -> None:
        # Echo replies: the page tests need answers of a known length.
        up = UpProcess("--port", str(self.port), "--reply-engine", "echo")
        self.up = up
        self.worker_addr = up.wait_for(READY, timeout=180).group(1)
        up.wait_for(BANNER, timeout=180)

    def stop(self) -> None:
        if self.up is not None:
            code = self.up.stop()
            assert code == 0, self.up.text
            self.up = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def system(chromium: str) -> Iterator[System]:
    running = System()
    yield running
    running.stop()
