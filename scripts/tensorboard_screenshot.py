"""A screenshot of what a newcomer sees first in TensorBoard: a real TensorBoard server on a runs folder,
read by headless Chromium, written as a PNG (docs/figures/tensorboard_quickstart.png by default).

    python scripts/tensorboard_screenshot.py          # runs/ -> docs/figures/tensorboard_quickstart.png
    python scripts/tensorboard_screenshot.py --logdir runs --tab scalars --out /tmp/scalars.png

Needs `tensorboard` (a dependency of albert_gpt) and a Chromium or Chrome binary (`apt install chromium`,
or --browser PATH). The page is the Custom Scalars tab unless --tab names another plugin.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, timeout: float = 60.0) -> None:
    """Until `url` answers 200, or a RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"TensorBoard did not answer at {url} within {timeout:.0f} s")


def screenshot(
    logdir: Path,
    out: Path,
    tab: str = "custom_scalars",
    browser: str | None = None,
    size: tuple[int, int] = (1400, 1000),
    settle_ms: int = 20000,
) -> Path:
    """Serve `logdir` with TensorBoard, open `tab` in headless Chromium, save the page as `out`."""
    browser = browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        raise SystemExit("no Chromium or Chrome found: apt install chromium, or pass --browser PATH")
    if not any(Path(logdir).rglob("events.out.tfevents.*")):
        raise SystemExit(f"{logdir}: no TensorBoard event files under it (train a run first)")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--reload_interval",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/data/runs")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no state from earlier visits
            subprocess.run(
                [
                    browser,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--user-data-dir={profile}",
                    f"--window-size={size[0]},{size[1]}",
                    f"--virtual-time-budget={settle_ms}",
                    f"--screenshot={out}",
                    f"{base}/#{tab}&_smoothingWeight=0",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=180,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    if not out.is_file() or out.stat().st_size == 0:
        raise SystemExit(f"the browser wrote no screenshot to {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", default="runs", help="folder of runs to serve (default: runs)")
    parser.add_argument("--out", default="docs/figures/tensorboard_quickstart.png")
    parser.add_argument("--tab", default="custom_scalars", help="TensorBoard plugin to open first")
    parser.add_argument("--browser", default=None, help="Chromium or Chrome binary")
    args = parser.parse_args()
    print(f"wrote {screenshot(Path(args.logdir), Path(args.out), args.tab, args.browser)}")


if __name__ == "__main__":
    main()
