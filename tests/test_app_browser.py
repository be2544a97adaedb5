"""End to end in headless Chromium: segment an uploaded photo, look at its token maps, switch
models, see the released checkpoints and the words a model never saw. Each test opens its own page
and picks the model it needs, so they run in any order. Screenshots go to test-output/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from magnet.checkpoint import save_checkpoint
from magnet.grounding_maps import PREFERENCE
from tests.helpers import tiny_model

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium; .ci/run installs it)",
    ),
]


def scene(path: Path) -> Path:
    """A small picture with a red square on the left and a blue disc on the right."""
    image = Image.new("RGB", (240, 160), (235, 230, 215))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 40, 100, 120), fill=(200, 30, 30))
    draw.ellipse((140, 40, 220, 120), fill=(30, 60, 200))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_server):
    """A fresh page (its own session); afterwards the server's model is tiny-grounding again, as
    the API tests that share the server expect."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(app_server.url)
    yield page
    page.goto(app_server.url)
    use_model(page, "tiny-grounding.safetensors")
    page.close()


@pytest.fixture(scope="module")
def vocabulary_checkpoint(checkpoint_dir: Path) -> Path:
    """A checkpoint in the app's folder that records its training words and synthetic data."""
    provenance = {"vocabulary": ["blue", "disc", "left", "on", "red", "the"], "data": "synthetic scenes (seed 0)"}
    return save_checkpoint(
        tiny_model(shallow=True), checkpoint_dir / "tiny-vocabulary.safetensors", provenance=provenance
    )


def choose_model(page, name: str) -> None:
    page.locator("#model-pick input").click()
    page.get_by_role("option", name=name).click()


def use_model(page, name: str) -> None:
    """Chooses a model and waits until the header shows it."""
    from playwright.sync_api import expect

    choose_model(page, name)
    expect(page.locator("#model-info")).to_contain_text(name)


def segment(page, image: Path, expressions: str) -> None:
    """Uploads an image, types the expressions (one per line) and clicks Segment."""
    from playwright.sync_api import expect

    page.locator("#image-input input[type=file]").set_input_files(str(image))
    expect(page.locator("#image-input img").first).to_be_visible()
    page.locator("#expressions textarea").fill(expressions)
    page.locator("#segment-button").click()


def set_threshold(page, value: str) -> None:
    box = page.get_by_label("number input for Threshold")
    box.fill(value)
    box.press("Enter")


def test_segment_then_grounding_in_the_browser(page, tmp_path):
    from playwright.sync_api import expect

    expect(page.get_by_text("MagNet Studio").first).to_be_visible()
    use_model(page, "tiny-grounding.safetensors")
    expect(page.locator("#model-info")).to_contain_text("M parameters")

    segment(page, scene(tmp_path / "scene.png"), "the red square on the left\nthe blue disc")

    overlay = page.locator("#overlay")
    expect(overlay.get_by_text("1. the red square on the left")).to_be_visible()  # legend, one entry each
    expect(overlay.get_by_text("2. the blue disc")).to_be_visible()
    expect(overlay.locator("img").first).to_be_visible()
    expect(page.locator("#status")).to_contain_text("2 expression(s)")
    expect(page.locator("#tokens")).to_contain_text("square")
    page.screenshot(path=str(SCREENSHOTS / "segment.png"), full_page=True)

    set_threshold(page, "0.95")  # re-rendered without the model (test_app_api checks the wiring)
    expect(page.locator("#segment-json")).to_contain_text('"threshold": 0.95')
    set_threshold(page, "0.5")
    expect(page.locator("#segment-json")).to_contain_text('"threshold": 0.5')

    page.get_by_role("tab", name="Grounding").click()
    expect(page.locator("#g-expr input")).to_have_value("the red square on the left")
    default = PREFERENCE[0]  # the tiny model has a Mask Grounding head: the best-ranked source is the default
    expect(page.locator("#g-note")).to_contain_text(f"Showing {default}")
    page.locator("#grounding-button").click()
    expect(page.locator("#token-grid img")).to_be_visible()
    expect(page.locator("#token-large img")).to_be_visible()
    grid = page.locator("#token-grid img").get_attribute("src")
    page.locator("#g-source").get_by_text("word-drop").click()
    page.locator("#grounding-button").click()
    expect(page.locator("#g-note")).to_contain_text("Showing word-drop")
    expect(page.locator("#token-grid img")).not_to_have_attribute("src", grid)  # the other source's maps

    page.get_by_role("button", name="Predict the masked word").click()
    expect(page.get_by_text("The head read:")).to_be_visible()
    expect(page.get_by_text("[MASK]").first).to_be_visible()
    page.get_by_role("button", name="Drop each word").click()
    # one row per word of the expression (the chart's axis may show the same label)
    expect(page.locator("#word-table").get_by_text("6. left")).to_be_visible()
    expect(page.locator("#word-plot canvas, #word-plot svg").first).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "grounding.png"), full_page=True)

    image = np.asarray(Image.open(SCREENSHOTS / "grounding.png"))
    assert image.shape[0] > 500 and image.std() > 10  # a rendered page, not a blank one


def test_switching_models_and_a_broken_checkpoint(page, tmp_path):
    from playwright.sync_api import expect

    info = page.locator("#model-info")
    use_model(page, "tiny-plain.safetensors")
    expect(info).to_contain_text("no Mask Grounding head")
    segment(page, scene(tmp_path / "scene.png"), "the blue disc")
    expect(page.locator("#status")).to_contain_text("1 expression(s)")
    page.get_by_role("tab", name="Grounding").click()
    expect(page.locator("#g-note")).to_contain_text("Showing")  # the default that needs no head
    page.locator("#g-source").get_by_text("mask-grounding").click()
    page.locator("#grounding-button").click()
    expect(page.get_by_text("has no Mask Grounding head").first).to_be_visible()

    choose_model(page, "magnet_broken.pth")
    expect(page.get_by_text("Could not load magnet_broken.pth").first).to_be_visible()
    expect(info).to_contain_text("tiny-plain.safetensors")  # the previous model stays
    expect(page.locator("#model-pick input")).to_have_value("tiny-plain.safetensors")


def test_picker_lists_the_released_checkpoints_beside_the_local_files(page):
    from playwright.sync_api import expect

    page.locator("#model-pick input").click()
    expect(page.get_by_role("option", name="tiny-plain.safetensors")).to_be_visible()
    for name, dataset in [("refcoco", "RefCOCO"), ("refcoco+", "RefCOCO+"), ("refcocog", "RefCOCOg")]:
        label = rf"^{re.escape(name)} · the authors' {re.escape(dataset)} weights \((~1\.2 GB download|downloaded)\)$"
        expect(page.get_by_role("option", name=re.compile(label))).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "model-picker.png"))
    page.keyboard.press("Escape")


def test_words_the_model_never_saw_are_named(page, vocabulary_checkpoint, tmp_path):
    from playwright.sync_api import expect

    page.get_by_role("button", name="Rescan checkpoints").click()
    use_model(page, vocabulary_checkpoint.name)
    expect(page.locator("#model-info")).to_contain_text("trained on synthetic scenes")
    segment(page, scene(tmp_path / "scene.png"), "the red square on the left\nthe blue disc")
    notes = page.locator("#notes")
    expect(notes).to_contain_text("“the red square on the left”: the model never saw square in training")
    expect(notes).to_contain_text("trained only on synthetic scenes")
    expect(notes).to_contain_text("refcoco")
    assert "the blue disc”: the model never saw" not in notes.inner_text()
    page.get_by_text("Model details").click()  # the whole provenance, its vocabulary as a word count
    expect(page.locator("#model-details")).to_contain_text("6 words")
    page.screenshot(path=str(SCREENSHOTS / "unseen-words.png"), full_page=True)
