"""Vendor KaTeX into the explorer's assets (run by hand when KaTeX is updated).

    cd /tmp && npm pack katex && tar xzf katex-*.tgz
    python -m visualize.vendor_katex /tmp/package

Copies ``dist/katex.min.js`` and ``LICENSE`` to ``visualize/explorer_assets/katex/``
and writes ``katex.css``: ``dist/katex.min.css`` with each kept font inlined as a
base64 ``data:`` URL (woff2 only: every browser that runs the page reads it),
so that the explorer page typesets its formulas offline, as one file. The
fonts of the families the explorer's formulas do not use (Caligraphic,
Fraktur, Script, SansSerif, Typewriter) are left out with their
``@font-face`` rules (about 100 KB less).
"""
import base64
import json
import os
import re
import shutil
import sys

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "explorer_assets", "katex")
DROPPED = ("Caligraphic", "Fraktur", "Script", "SansSerif", "Typewriter")


def vendor(package, out=HERE):
    """Copy KaTeX from the npm ``package`` folder into ``out``; returns its version."""
    dist = os.path.join(package, "dist")
    with open(os.path.join(package, "package.json"), encoding="utf-8") as f:
        version = json.load(f)["version"]
    os.makedirs(out, exist_ok=True)
    shutil.copy(os.path.join(dist, "katex.min.js"), os.path.join(out, "katex.min.js"))
    shutil.copy(os.path.join(package, "LICENSE"), os.path.join(out, "LICENSE"))
    with open(os.path.join(dist, "katex.min.css"), encoding="utf-8") as f:
        css = f.read()

    def face(m):
        rule = m.group(0)
        if any(f"KaTeX_{d}" in rule for d in DROPPED):
            return ""
        font = re.search(r"url\((fonts/[^)]+\.woff2)\)", rule).group(1)
        with open(os.path.join(dist, font), "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        return re.sub(r"src:[^;}]*", f'src:url(data:font/woff2;base64,{data}) format("woff2")', rule)

    css = re.sub(r"@font-face\{[^}]*\}", face, css)
    with open(os.path.join(out, "katex.css"), "w", encoding="utf-8") as f:
        f.write(f"/* KaTeX {version} (MIT, see LICENSE): katex.min.css, woff2 fonts inlined */\n{css}\n")
    with open(os.path.join(out, "VERSION"), "w", encoding="utf-8") as f:
        f.write(version + "\n")
    return version


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m visualize.vendor_katex PATH/TO/katex/package")
    print("vendored KaTeX", vendor(sys.argv[1]))
