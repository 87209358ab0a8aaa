"""The page at ``/`` in a real headless Chromium (Debian's, driven by Playwright): a photo is
uploaded, the result shows a box on the photo and one card of 7 emotion bars per face."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.serve import Service, astronaut_png

from fer_ray.data import CLASS_NAMES

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
# Set to keep a copy of the screenshot for people to look at (tests write nowhere else).
LOOK_HERE = os.environ.get("FER_RAY_PAGE_SCREENSHOT", "")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_the_page_shows_boxes_and_bars_for_an_uploaded_photo(served: Service,
                                                              tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (make test does)")
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png())
    shot = tmp_path / "page.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(served.url)
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            cards = page.locator("#faces .face")
            assert cards.count() >= 1
            bars = cards.first.locator(".bar")
            assert bars.count() == len(CLASS_NAMES)
            assert [bars.nth(i).get_attribute("data-emotion") for i in range(7)] == \
                list(CLASS_NAMES)
            widths = [bars.nth(i).locator(".fill").evaluate("e => e.style.width")
                      for i in range(7)]
            assert abs(sum(float(w.rstrip("%")) for w in widths) - 100) < 1.0
            assert "face" in page.locator("#status").inner_text()
            # The box is drawn: some canvas pixels have the first face's colour (#e6194b).
            red = page.evaluate("""() => {
                const c = document.getElementById('photo');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4)
                  if (d[i] === 0xe6 && d[i + 1] === 0x19 && d[i + 2] === 0x4b) n++;
                return n; }""")
            assert red > 100, red
            page.screenshot(path=str(shot), full_page=True)
            assert errors == []
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    if LOOK_HERE:
        shutil.copyfile(shot, LOOK_HERE)
