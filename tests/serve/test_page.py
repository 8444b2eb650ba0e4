"""The web page of `maskrcnn serve` in headless Chromium (Playwright driving the system's
/usr/bin/chromium): uploading a coco-mini image through the file input draws the returned masks on
the canvas (checked pixel by pixel against the plain image) and fills the detection table, and the
score slider re-filters the table."""

from __future__ import annotations

import base64
import io
import shutil

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from tests.conftest import skip_or_fail_in_ci
from tests.helpers import drawing_zones

PHOTO = "coco-mini/val2017/000000011813.jpg"  # the tiny model scores it 0.371..0.388
WAIT_MS = 60_000
ROWS = "#detections tbody tr"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# the canvas, and the same image drawn alone on a fresh canvas, as PNG data URLs
CANVAS_PNG = "document.getElementById('canvas').toDataURL('image/png')"
PLAIN_PNG = """async () => {
  const image = new Image();
  image.src = URL.createObjectURL(document.getElementById('file').files[0]);
  await image.decode();
  const canvas = document.createElement('canvas');
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  canvas.getContext('2d').drawImage(image, 0, 0);
  return canvas.toDataURL('image/png');
}"""
SET_SLIDER = """(value) => {
  const slider = document.getElementById('threshold');
  slider.value = String(value);
  slider.dispatchEvent(new Event('input', {bubbles: true}));
}"""


def _pixels(data_url: str) -> np.ndarray:
    png = base64.b64decode(data_url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _rgb(css: str) -> np.ndarray:
    return np.array([int(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3]])


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")  # the system's (/usr/bin/chromium): Playwright downloads none
    if chromium is None:
        skip_or_fail_in_ci("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail_in_ci("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def test_upload_draws_masks_and_fills_the_table(server, browser, shared_data):
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{server.url}/")
    page.wait_for_function("document.getElementById('model-info').textContent.includes('classes')")
    assert "2 classes (cat, dog) · pytorch on cpu" in page.text_content("#model-info")
    page.evaluate(SET_SLIDER, 0.3)  # the tiny model's scores are about 1/3
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files("#file", str(shared_data / PHOTO))
    result = answer.value.json()
    page.wait_for_function("document.getElementById('summary').textContent !== ''")
    detections = result["detections"]
    shown = [d for d in detections if d["score"] >= 0.3]
    assert len(detections) == 5 and len(shown) > 0
    assert page.locator(ROWS).count() == len(shown)
    assert page.text_content("#summary").startswith(f"{len(shown)} of 5 detections")

    canvas, plain = _pixels(page.evaluate(CANVAS_PNG)), _pixels(page.evaluate(PLAIN_PNG))
    h, w = result["height"], result["width"]
    assert canvas.shape == plain.shape == (h, w, 3)
    masks = mask_util.decode([d["segmentation"] for d in shown]).transpose(2, 0, 1).astype(bool)
    boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in (d["bbox"] for d in shown)])
    outline, label = drawing_zones(boxes, h, w)
    untouched = ~(masks.any(0) | outline | label)
    assert (canvas[untouched] == plain[untouched]).all(axis=-1).mean() > 0.999
    # the masks: each blended at 50% in its table colour, the best-scoring one last (on top), each
    # step rounded to 8 bits as the canvas stores it
    swatches = page.locator(f"{ROWS} td.swatch span")
    colors = [
        _rgb(swatches.nth(i).evaluate("e => getComputedStyle(e).backgroundColor")) for i in range(len(shown))
    ]
    assert len({tuple(c) for c in colors}) == len(shown)
    expected = plain.astype(np.float64)
    for mask, color in reversed(list(zip(masks, colors))):
        expected[mask] = np.round(expected[mask] * 0.5 + color * 0.5)
    inside = masks.any(0) & ~outline & ~label
    assert inside.sum() > 5000  # this model's masks cover thousands of pixels
    assert (np.abs(canvas[inside] - expected[inside]) <= 1).all(axis=-1).mean() > 0.99
    assert (canvas[inside] != plain[inside]).any(axis=-1).mean() > 0.9

    # (a slider position, in steps of 0.01, that keeps some but not all of them)
    between = [t / 100 for t in range(101) if 0 < sum(d["score"] >= t / 100 for d in shown) < len(shown)]
    assert between, [d["score"] for d in shown]
    page.evaluate(SET_SLIDER, between[0])
    kept = sum(d["score"] >= between[0] for d in detections)
    page.wait_for_function(f"document.querySelectorAll('{ROWS}').length === {kept}")
    assert page.text_content("#summary").startswith(f"{kept} of 5 detections")
    page.close()


def test_refused_upload_shows_the_reason(server, browser, tmp_path):
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{server.url}/")
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list: eggs, milk\n")
    page.set_input_files("#file", str(notes))
    page.wait_for_function("document.getElementById('status').classList.contains('error')")
    assert "415: notes.txt: not an image" in page.text_content("#status")
    assert page.locator(ROWS).count() == 0
    page.close()
