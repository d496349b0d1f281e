"""The status page in a real headless Chromium (Debian's `chromium`): the DOM shows the stories; a phone-width
screenshot renders.

Skipped where no Chromium is installed, unless HN_ALERTS_NEED_BROWSER=1 (set by .ci/run, which installs it):
then a missing browser is a failure, not a skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests import trees
from tests.fakehn import FakeHN
from tests.smtpserver import free_port
from tests.test_operations import served
from tests.test_stream import until

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
if BROWSER is None and os.environ.get("HN_ALERTS_NEED_BROWSER") != "1":
    pytest.skip("no Chromium installed (apt-get install chromium)", allow_module_level=True)

#: A phone's viewport in CSS pixels.
PHONE = (390, 844)


def chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None, "HN_ALERTS_NEED_BROWSER=1 but no Chromium is installed"
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # tests may run as root (CI containers)
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_the_page_in_a_real_browser_shows_the_stories_and_renders_at_phone_width(
    hn: FakeHN, env: dict[str, str], tmp_path: Path
) -> None:
    """Chromium loads / from the running service: the DOM holds each story with its count, next tier and chart;
    the screenshot at 390 px wide is a real PNG of that size."""
    hn.add_story(1, trees.wide(1_000, 120), title="Busy thread")
    hn.add_story(2, trees.wide(2_000, 60), title="Quiet one")
    hn.set_list("topstories", [1, 2])
    port = free_port()
    cfg = {**env, "ALERTS_COMMENT_THRESHOLD": "100,200", "ALERTS_POLL_INTERVAL": "0.2"}
    shot = Path(os.environ.get("HN_ALERTS_SCREENSHOT", tmp_path / "status-page.png"))
    async with served(cfg, port) as app:
        for _ in range(3):  # three cycles: two growth samples at least
            hn.create_item(2)
            cycles = app.service._cycles
            await until(lambda c=cycles: app.service._cycles >= c + 2, "two more cycles")
        url = f"http://127.0.0.1:{port}/"
        dom = await asyncio.to_thread(chromium, "--dump-dom", url)
        picture = await asyncio.to_thread(chromium, f"--screenshot={shot}", f"--window-size={PHONE[0]},{PHONE[1]}", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert '<tr class="story" data-id="1">' in html and '<tr class="story" data-id="2">' in html
    assert ">Busy thread</a>" in html and ">Quiet one</a>" in html
    assert '<td class="n">120</td>' in html and '<td class="n">200</td>' in html  # count, next tier
    assert "<polyline points=" in html  # the growth chart, drawn server-side
    assert 'id="health">Healthy<' in html
    assert picture.returncode == 0, picture.stderr[-2000:]
    assert png_size(shot) == PHONE
