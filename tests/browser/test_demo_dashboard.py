"""The README's demo (``python -m hub.demo``) as a new user meets it, run as a real process on 127.0.0.1:
ports chosen by flag and by environment, its banner followed only by lines that say something changed, its
dashboard signed into in real Chromium with the credential the banner prints, and one clear sentence (exit 1)
when its store agent dies."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

READY_TIMEOUT_S = 60  # a loaded machine starts the agent slowly
END_TIMEOUT_S = 30
STATUS_LINES_WANTED = 3


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Demo:
    def __init__(self, proc: asyncio.subprocess.Process, work: Path, port: int, handheld: int) -> None:
        self.proc, self.work, self.port, self.handheld = proc, work, port, handheld
        self.lines: list[str] = []

    async def line(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
        if not raw:
            raise EOFError(f"the demo ended; it printed: {self.lines}")
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def until(self, pattern: str) -> re.Match[str]:
        while True:
            found = re.search(pattern, await self.line())
            if found:
                return found


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    port, handheld = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hub.demo", "--dir", str(tmp_path / "demo"), "--handheld-port", str(handheld),
        "--movements", "60", "--rate", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SHELFSYNC_DEMO_PORT": str(port), "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        yield Demo(proc, tmp_path / "demo", port, handheld)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), END_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_the_demo_on_chosen_ports_prints_changes_only_and_stops_when_its_agent_dies(
    page: Page, demo: Demo, console_errors: list[str]
) -> None:
    run, handheld = demo, demo.handheld
    hub = f"http://127.0.0.1:{demo.port}"
    header = await run.until(r"^shelfsync demo — hub (\S+) .* \(pid (\d+)\)$")
    assert header.group(1) == hub  # the port from SHELFSYNC_DEMO_PORT
    agent_pid = int(header.group(2))
    assert (await run.until(r"^  handheld: +(\S+)")).group(1) == f"http://127.0.0.1:{handheld}/"  # --handheld-port
    token = (await run.until(r"^  reader credential: (\S+) ")).group(1)

    await page.goto(f"{hub}/dashboard/sign-in")
    await page.fill("#token", token)
    await page.click("button[type=submit]")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await page.click("nav a[data-view=stock]")
    await expect(page.locator('#stock-body tr[data-key="STORE-1|COFFEE-250G"]')).to_be_visible(timeout=30_000)
    await expect(page.locator('#stock-body tr[data-key="STORE-1|COFFEE-250G"] [data-field="name"]')).to_have_text(
        "Coffee 250G"
    )  # the demo's catalog names it
    assert await asyncio.to_thread(http_status, f"http://127.0.0.1:{handheld}/") == 200  # the agent's handheld page

    assert (await run.line()) == "  The line below changes only when the counts do."
    status = [await run.line() for _ in range(STATUS_LINES_WANTED)]  # the scanner keeps scanning: counts change
    assert all(line.startswith("STORE-1 on hand: ") for line in status), status
    summaries = [line.rsplit("   (", 1)[0] for line in run.lines if line.startswith("STORE-1 on hand: ")]
    assert all(a != b for a, b in itertools.pairwise(summaries)), "a line that says nothing changed"

    os.kill(agent_pid, signal.SIGKILL)  # the store agent dies
    last = (await run.until(r"^The demo's store agent")).string
    assert last == (
        f"The demo's store agent (pid {agent_pid}) was killed by SIGKILL, so the demo stops; anything it said is "
        f"above, and its files are in {run.work}."
    )
    assert run.proc.stdout is not None
    assert await asyncio.wait_for(run.proc.stdout.read(), END_TIMEOUT_S) == b""  # nothing after the sentence
    assert await asyncio.wait_for(run.proc.wait(), END_TIMEOUT_S) == 1
    console_errors.clear()  # the dashboard loses its live feed when the demo's hub stops: meant


async def test_a_port_in_use_is_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hub.demo", "--dir", str(tmp_path / "demo"), "--port", str(port),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), END_TIMEOUT_S)
    assert proc.returncode == 2 and out == b""
    assert err.decode() == (
        f"shelfsync demo: the demo cannot use port {port} on 127.0.0.1 for the hub (address already in use); "
        "choose another with --port N or SHELFSYNC_DEMO_PORT=N (0 picks a free one)\n"
    )
