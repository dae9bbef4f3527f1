"""The HTML report and the attention explorer in a real browser: Debian's chromium, driven by
Playwright (no browser download). Without chromium these tests skip, except under CI=true,
where they fail: .ci/run installs it."""

import os
import shutil
from pathlib import Path

import pytest
import torch

import cnl
from cnl.analysis.attention import grid_layer, map_cell, record_maps
from cnl.analysis.report import build_report
from cnl.cli import main
from cnl.data import eval_transform, load_image
from cnl.data.synth import SynthConfig, generate
from cnl.models.plug import plugged

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network: no background connections, no update checks, no sandbox as root.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENS = {"desktop": (1280, 800), "phone": (390, 844)}


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed: .ci/run installs it with apt-get")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A trained CNL run, its report and its explorer page."""
    root = tmp_path_factory.mktemp("browser")
    data = generate(root / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=64))
    run = root / "run"
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--img-size", "64",
        "--epochs", "1", "--global-batch-size", "4", "--workers", "0", "--device", "cpu", "--width", "16",
        "--output", str(run),
    ]  # fmt: skip
    assert main(args) == 0
    index = build_report([run], root / "report", images=2)
    return run, index, root / "report" / "explorer_run.html"


def open_page(browser, path: Path, size=SCREENS["desktop"]):
    """The page at ``path`` and the console errors and uncaught exceptions it produced."""
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, errors


def all_images_decoded(page) -> bool:
    return page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")


def test_report_and_explorer_load_without_errors_and_the_report_opens_the_explorer(browser, report):
    _, index, explorer = report
    page, errors = open_page(browser, index)
    assert all_images_decoded(page) and page.evaluate("document.images.length") >= 3
    page.click("a[href='explorer_run.html']")  # the report's link: a user's double click on index.html, then this
    page.wait_for_load_state("load")
    assert page.url == explorer.as_uri()
    assert all_images_decoded(page) and page.evaluate("document.images.length") == 2 * 5  # under each map
    assert page.evaluate("window.cnlExplorer.images.length") == 2
    # Each query canvas holds its decoded image (drawn once the embedded JPEG loaded), not a blank.
    drawn = "[...document.querySelectorAll('.query canvas')].map(c => c.getContext('2d')"
    drawn += ".getImageData(0, 0, c.width, c.height).data.some((v, k) => k % 4 != 3 && v > 0))"
    assert page.evaluate(drawn) == [True, True]
    assert errors == []
    page.close()


def displayed_values(page, image: int) -> dict[str, list[int]]:
    """Each map canvas of an image, its pixels turned back into 8-bit values through the colour table."""
    return page.evaluate(
        """(image) => {
            const lut = window.cnlExplorer.lut.map(c => c.join(","));
            const section = document.querySelectorAll("section.image")[image];
            const out = {};
            for (const canvas of section.querySelectorAll("canvas.map")) {
                const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
                const values = [];
                for (let p = 0; p < data.length; p += 4)
                    values.push(lut.indexOf([data[p], data[p + 1], data[p + 2]].join(",")));
                out[canvas.dataset.layer] = values;
            }
            return out;
        }""",
        image,
    )


def test_clicking_a_query_cell_shows_the_models_attention_row(browser, report):
    run, _, explorer = report
    model, _ = cnl.load_model(run / "checkpoints" / "best.pt")
    model.eval()
    page, errors = open_page(browser, explorer)
    section = 1
    name = page.locator("section.image h2").nth(section).text_content()
    x = eval_transform(64)(load_image(next((run.parent / "data" / "images").rglob(name))))
    maps, hooks = record_maps(model, [grid_layer(model), plugged(model).query])
    with torch.no_grad():
        _, attention = model.forward_with_attention(x.unsqueeze(0))
    for hook in hooks:
        hook.remove()
    grid = tuple(maps[grid_layer(model)].shape[-2:])
    query_grid = tuple(maps[plugged(model).query].shape[-2:])
    for cell in [(0, 0), (grid[0] - 1, grid[1] - 1), (grid[0] // 2, 0)]:
        canvas = page.locator("section.image").nth(section).locator(".query canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.mouse.click(
            box["x"] + (cell[1] + 0.5) * box["width"] / grid[1], box["y"] + (cell[0] + 0.5) * box["height"] / grid[0]
        )
        assert page.evaluate(f"window.cnlExplorer.images[{section}].cell") == list(cell)
        shown = displayed_values(page, section)
        assert list(shown) == list(plugged(model).responses)
        for layer, values in shown.items():
            row = attention[layer][0, map_cell(cell, grid, query_grid)]
            expected = (row / row.max() * 255).round()
            assert (torch.tensor(values, dtype=torch.float32) - expected).abs().max() <= 1, (cell, layer)
    # One colour scale for every map of the cell: each map at its share of the largest maximum.
    page.check("#shared")
    shown = displayed_values(page, section)
    top = max(float(attention[layer][0, map_cell(cell, grid, query_grid)].max()) for layer in plugged(model).responses)
    for layer, values in shown.items():
        row = attention[layer][0, map_cell(cell, grid, query_grid)]
        assert (torch.tensor(values, dtype=torch.float32) - (row / top * 255).round()).abs().max() <= 1
    assert errors == []
    page.close()


OFF_SCREEN = """() => {
    const width = window.innerWidth, out = [];
    for (const e of document.body.querySelectorAll("*")) {
        const r = e.getBoundingClientRect();
        if (!r.width || !r.height || e.closest(".wide") || e.tagName === "SCRIPT") continue;
        if (r.left < -1 || r.right > width + 1) out.push(e.tagName + "." + e.className + " " + r.left + ".." + r.right);
    }
    return {out, scroll: document.documentElement.scrollWidth, width};
}"""


@pytest.mark.parametrize("screen", SCREENS)
def test_nothing_is_off_screen_on_a_desktop_or_a_phone(browser, report, screen, tmp_path):
    _, index, explorer = report
    for name, path in (("report", index), ("explorer", explorer)):
        page, errors = open_page(browser, path, SCREENS[screen])
        if name == "explorer":
            box = page.locator(".query canvas").first.bounding_box()
            page.mouse.click(box["x"] + box["width"] / 3, box["y"] + box["height"] / 2)
        shot = tmp_path / f"{name}_{screen}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("CNL_SCREENSHOTS") and name == "explorer":  # docs/figures.md shows these
            shutil.copy(shot, Path(os.environ["CNL_SCREENSHOTS"]) / shot.name)
        layout = page.evaluate(OFF_SCREEN)
        assert layout["out"] == [] and layout["scroll"] <= layout["width"], (name, screen, layout)
        assert errors == []
        page.close()


def test_a_resnet50_page_of_five_images_at_448_stays_under_15_mb(tmp_path):
    from cnl.analysis.explorer import write_explorer

    data = generate(tmp_path / "data", SynthConfig(classes=2, train_per_class=1, test_per_class=3, image_size=64))
    images = sorted((data / "images").rglob("*.jpg"))[:5]
    model = cnl.create_model("resnet50_cnl5", num_classes=2).eval()
    page = write_explorer(model, ["a", "b"], images, 448, tmp_path / "explorer.html")
    size = page.stat().st_size
    assert 5 * 196 * (2 * 3136 + 3 * 784) * 4 / 3 < size < 15 * 2**20  # every map is there, base64
