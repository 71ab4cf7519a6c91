"""Take the explorer screenshots shown in the docs (docs/explorer.png, docs/explorer_update.png).

    .venv/bin/python docs/make_explorer_screenshot.py

alexnet-small on one validation batch of the bundled digits. ``explorer.png``:
the layers collapsed, each forward box with its feature maps, every backward box
with its gradient check, conv1/w's gradient path lit, and the step through the
backward pass at conv3's input gradient (case 2, the inversion of indexes,
typeset), hovering one ``dX_ij`` (the formula with its numbers).
``explorer_update.png``: *take one step*, one SGD step for every parameter.
Needs Playwright and Debian's chromium (``/usr/bin/chromium``).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import visualize as vz  # noqa: E402
from models.alexnet import alexnet_small  # noqa: E402
from models.data import load_dataset  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main(out=os.path.join(HERE, "explorer.png")):
    data = load_dataset("digits", 24, channels=3, seed=0)
    model = alexnet_small(data.num_classes, 24, width=8, hidden=32)
    images, labels = next(iter(data.val_batches(8)))
    page_path = os.path.join(HERE, "_explorer_tmp.html")
    page = vz.explore(model, feed={model.images: images, model.labels: labels}, path=page_path,
                      title="alexnet-small on digits")
    grad_input = next(n for n in page.data["nodes"] if n["op"] == "conv2d_grad_input" and n["scope"] == "conv3")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        tab.goto("file://" + page_path)
        tab.wait_for_selector("body[data-ready='1']")
        tab.select_option("#gd-param", "conv1/w")
        index = tab.evaluate(f"gdExplorer.schedule.indexOf({grad_input['id']})")
        tab.evaluate(f"gdExplorer.step({index + 1})")
        tab.evaluate("gdExplorer.collapse('conv3')")
        tab.evaluate("gdExplorer.initialView()")
        tab.hover("table[data-grid='dX'] td[data-i='2'][data-j='1']")
        tab.evaluate("document.getElementById('gd-panel').scrollTop = 1e6")  # the formula below the grids
        tab.screenshot(path=out + ".tmp.png")
        tab.click("#gd-update-btn")
        update = os.path.join(os.path.dirname(out), "explorer_update.png")
        tab.screenshot(path=update + ".tmp.png")
        browser.close()
    os.remove(page_path)
    from PIL import Image

    for path in (out, update):
        Image.open(path + ".tmp.png").convert("RGB").quantize(colors=128).save(path, optimize=True)
        os.remove(path + ".tmp.png")
        print(f"wrote {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
    main()
