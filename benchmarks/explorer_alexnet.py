"""Time the explorer on AlexNet 2012, forward + backward (goal: the page opens
and answers a click within 3 s in headless Chromium).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/explorer_alexnet.py [--batch 2] [--repeat 3]

Builds ``visualize.explore`` pages of AlexNet (both passes, the compiled SGD
step's passes and memory plan) without values and with the values of a batch
of random images, prints the Python-side seconds and the page size, then in
headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright): the
seconds to open the page (load to ready), to open a layer with a click, to
select a node, to expand every layer, to light conv1/w's gradient path and to
take one backward step. Medians over ``--repeat`` page loads.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import visualize as vz  # noqa: E402
from models.alexnet import alexnet, train_step  # noqa: E402
from machine import blas_info, cpu_model  # noqa: E402 - the benchmarks' folder is on sys.path when run

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def time_page(browser, path):
    """Seconds for each interaction, on a fresh page: (label, action, selector or
    function that tells it is done)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    steps = [
        ("open", lambda: page.goto("file://" + path), "body[data-ready='1']"),
        ("click: open conv2", lambda: page.click("#gd-nodes g.scope[data-scope='conv2']"), "#gd-nodes g.node[data-id]"),
        ("click: select a node", lambda: page.click("#gd-nodes g.node[data-id]"), "#gd-details h3"),
        ("expand all", lambda: page.click("#gd-expand-all"),
         "document.querySelectorAll('#gd-nodes g.scope').length === 0"),
        ("gradient path of conv1/w", lambda: page.select_option("#gd-param", "conv1/w"), "#gd-nodes g.node.lit"),
        ("one backward step", lambda: page.click("#gd-step-next"), "#gd-step-info [data-step-node]"),
    ]
    out = {}
    for label, action, done in steps:
        t = time.perf_counter()
        action()
        if done.startswith("document."):
            page.wait_for_function(done, timeout=60000)
        else:
            page.wait_for_selector(done, timeout=60000)
        out[label] = time.perf_counter() - t
    page.close()
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {cpu_model()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t = time.perf_counter()
    model = alexnet()
    program = train_step(model).program
    print(f"build AlexNet and compile its SGD step: {time.perf_counter() - t:.1f} s")
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.batch, 3, 227, 227)).astype(np.float32)
    labels = rng.integers(0, 1000, args.batch)
    pages = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, feed in (("structure only", None), (f"values of {args.batch} images",
                                                        {model.images: images, model.labels: labels})):
            path = os.path.join(tmp, f"alexnet_{len(pages)}.html")
            t = time.perf_counter()
            page = vz.explore(model, feed=feed, program=program, path=path)
            seconds = time.perf_counter() - t
            pages[label] = path
            print(f"explore ({label}): {seconds:.2f} s in Python, {os.path.getsize(path) / 1e6:.2f} MB, "
                  f"{len(page.data['graph'])} nodes, {len(page.data['program']['schedule'])} scheduled")
        print(f"BLAS: {'; '.join(blas_info())}")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for label, path in pages.items():
                runs = [time_page(browser, path) for _ in range(args.repeat)]
                print(f"headless Chromium, {label} (median of {args.repeat}):")
                for key in runs[0]:
                    print(f"  {key:28s} {statistics.median(r[key] for r in runs):.3f} s")
            browser.close()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
