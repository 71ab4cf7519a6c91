"""Take the explorer screenshot shown in the README (docs/explorer.png).

    .venv/bin/python docs/make_explorer_screenshot.py

alexnet-small on one validation batch of the bundled digits: every layer
collapsed but conv3, conv1/w's gradient path lit, and the step through the backward pass at
conv2's input gradient (case 2, the inversion of indexes), hovering one
``dX_ij``. Needs Playwright and Debian's chromium (``/usr/bin/chromium``).
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
        tab = browser.new_page(viewport={"width": 1500, "height": 860})
        tab.goto("file://" + page_path)
        tab.wait_for_selector("body[data-ready='1']")
        tab.select_option("#gd-param", "conv1/w")
        index = tab.evaluate(f"gdExplorer.schedule.indexOf({grad_input['id']})")
        tab.evaluate(f"gdExplorer.step({index + 1})")
        tab.click("#gd-fit")
        tab.hover("table[data-grid='dX'] td[data-i='2'][data-j='1']")
        tab.screenshot(path=out + ".tmp.png")
        browser.close()
    os.remove(page_path)
    from PIL import Image

    Image.open(out + ".tmp.png").convert("RGB").quantize(colors=128).save(out, optimize=True)
    os.remove(out + ".tmp.png")
    print(f"wrote {out} ({os.path.getsize(out):,} bytes)")


if __name__ == "__main__":
    main()
