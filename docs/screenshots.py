"""Regenerate the README's screenshots of the page (docs/page-customer-service.png,
docs/page-medical.png) from the demos' runs, in headless Chromium:

    mmagent demo customer-service --quick -o runs/page
    mmagent demo medical --quick -o runs/page
    python docs/screenshots.py runs/page        # chromium: `make browser`; playwright: the dev extra

Each run is served on loopback (`mmagent serve`), the page is filled in (a spoken request for
customer service; a test image and its note for medical), and the whole page is captured once
the explanation has arrived.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd

DOCS = Path(__file__).resolve().parent
WAIT_MS = 600_000  # explaining a spoken request (audio occlusion) on a busy CPU takes minutes


@contextlib.contextmanager
def serve(run_dir: Path) -> Iterator[str]:
    """``mmagent serve run_dir`` on a free loopback port; yields its URL once the model is loaded."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "mmagent", "serve", str(run_dir), "--port", str(port)], env={**os.environ, "MMAGENT_API_KEYS": ""})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"error: mmagent serve {run_dir} exited with status {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "readyz", timeout=2).status_code == 200:
                    break
            if time.time() > deadline:
                raise SystemExit(f"error: {run_dir} was not ready after 300 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def shoot(browser, url: str, values: dict[str, str | Path], out: Path) -> None:
    """Fill the page's form with ``values`` (column -> text, or a file for media), ask, wait for
    the explanation and save a screenshot of the whole page."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900}, device_scale_factor=1)
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    page.wait_for_selector("#main:not([hidden])")
    for column, value in values.items():
        control = page.locator(f'[data-field="{column}"] [name="{column}"]')
        if isinstance(value, Path):
            control.set_input_files(str(value))
        else:
            control.fill(value)
    page.click("#submit")
    page.wait_for_selector("#action:not(:empty)")
    expect(page.locator("#explain-status")).not_to_have_text("explaining…", timeout=WAIT_MS)  # the explanation came (or was refused)
    page.wait_for_timeout(300)  # images (previews, heatmap) finish decoding
    page.screenshot(path=str(out), full_page=True)
    page.close()
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demos", type=Path, help="the -o folder given to `mmagent demo` (holds customer-service/ and medical/)")
    parser.add_argument("--chromium", default=os.environ.get("MMAGENT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--only", choices=["customer-service", "medical"], help="regenerate one screenshot")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    cs, med = args.demos / "customer-service", args.demos / "medical"
    jobs = []
    if args.only in (None, "customer-service"):
        jobs.append((cs / "run", {"audio": cs / "data" / "spoken_0.wav"}, DOCS / "page-customer-service.png"))
    if args.only in (None, "medical"):
        case = pd.read_csv(med / "data" / "test.csv", dtype=str).iloc[0]
        jobs.append((med / "run", {"image": med / "data" / case["image"], "note": case["note"]}, DOCS / "page-medical.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
        for run_dir, values, out in jobs:
            with serve(run_dir) as url:
                shoot(browser, url, values, out)
        browser.close()


if __name__ == "__main__":
    main()
