"""Execute the lecture's notebooks and render them to HTML pages.

    python -m notebooks.build --out site          # all eight, in order
    python -m notebooks.build --out site 03 06    # those whose names start so

The sources are Markdown (jupytext's ``markdown`` format: prose, and
```` ```python ```` blocks as code cells), kept without outputs so that a
diff shows only what a person wrote. Each is read with jupytext, executed
top to bottom with nbclient in a kernel of this very interpreter (so the
kernel sees the same graphdiff, NumPy and Graphviz renderer as the command),
in a fresh temporary folder, and converted to one HTML page with nbconvert
(figures and the explorer embedded, so each page stands alone). Links
between notebooks (``02-convolution-gradient.md``) become links between
pages (``02-convolution-gradient.html``); ``index.html`` lists them.

A cell that raises (an ``assert`` that checks a formula against the engine,
say) stops its notebook: the command prints one ``error:`` line naming the
notebook and the cell, and exits with status 2.
"""
import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: a kernel spec written for each run (see :func:`this_kernel`), never the user's
KERNEL_NAME = "graphdiff-notebooks"
#: seconds one cell may run before the notebook fails
CELL_TIMEOUT_S = 240


def sources():
    """The notebooks' Markdown sources, in reading order (``01-...md`` to ``08-...md``)."""
    return sorted(HERE.glob("[0-9][0-9]-*.md"))


def read(path):
    """The notebook of one Markdown source (an ``nbformat`` notebook, no outputs)."""
    import jupytext

    return jupytext.read(path, fmt="md")


@contextlib.contextmanager
def this_kernel():
    """A Jupyter kernel spec named :data:`KERNEL_NAME` that starts *this*
    interpreter (``sys.executable``) with this checkout first on its path,
    in a temporary ``JUPYTER_PATH``: the notebooks run with the Python that
    runs the command, whatever kernels the machine has registered."""
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PYTHONPATH")}
    with tempfile.TemporaryDirectory(prefix="graphdiff-kernel-") as tmp:
        spec = Path(tmp, "kernels", KERNEL_NAME)
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "graphdiff", "language": "python"}))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, saved["JUPYTER_PATH"]) if p)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
        try:
            yield KERNEL_NAME
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def execute(nb, cwd, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME):
    """Run every cell of ``nb`` in place, in the folder ``cwd`` (inside
    :func:`this_kernel`). A failing cell raises nbclient's
    ``CellExecutionError`` (its message holds the cell and the traceback)."""
    from nbclient import NotebookClient

    NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def link_pages(nb):
    """Links to a sibling notebook's source (``03-relu-pooling.md``) point to
    its page (``03-relu-pooling.html``)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"\]\((\d\d-[\w-]+)\.md(#[\w-]*)?\)", r"](\1.html\2)", cell.source)
    return nb


#: wide diagrams (the pseudo-graphs, AlexNet both ways) shrink to the page's width instead of being cut off
PAGE_STYLE = "<style>.jp-OutputArea-output svg, .jp-OutputArea-output img { max-width: 100%; height: auto; }</style>"


def to_html(nb):
    """One self-contained HTML page of an executed notebook (nbconvert's
    ``lab`` template; images inlined; wide diagrams fitted to the page)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(link_pages(nb))
    return body.replace("</head>", PAGE_STYLE + "\n</head>", 1)


def title_of(nb):
    """The first Markdown heading of the notebook."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return "notebook"


def index_html(pages):
    """A page listing ``[(file name, title, seconds)]``."""
    import html

    items = "\n".join(f'<li><a href="{html.escape(f)}">{html.escape(t)}</a></li>' for f, t, _ in pages)
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>graphdiff: the lecture as notebooks</title>"
            f"</head><body><h1>The lecture as notebooks</h1>\n<ol>\n{items}\n</ol></body></html>\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m notebooks.build", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the HTML pages (created if missing)")
    p.add_argument("--timeout", type=float, default=CELL_TIMEOUT_S,
                   help=f"seconds one cell may run (default {CELL_TIMEOUT_S})")
    p.add_argument("only", nargs="*", help="build only the notebooks whose names start with these (e.g. 03)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    chosen = [p for p in sources() if not args.only or any(p.name.startswith(o) for o in args.only)]
    if not chosen:
        print(f"error: no notebook in {HERE} starts with {' or '.join(args.only)}", file=sys.stderr)
        return 2
    from nbclient.exceptions import CellExecutionError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pages = []
    with this_kernel():
        for path in chosen:
            nb = read(path)
            start = time.perf_counter()
            try:
                with tempfile.TemporaryDirectory(prefix="graphdiff-nb-") as cwd:
                    execute(nb, cwd, timeout=args.timeout)
            except CellExecutionError as exc:
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                print(f"error: {path.name}: a cell failed: {last}", file=sys.stderr)
                return 2
            seconds = time.perf_counter() - start
            page = path.with_suffix(".html").name
            (out / page).write_text(to_html(nb), encoding="utf-8")
            pages.append((page, title_of(nb), seconds))
            print(f"{path.name}: executed in {seconds:.1f} s -> {out / page}", flush=True)
    if not args.only:
        (out / "index.html").write_text(index_html(pages), encoding="utf-8")
    print(f"{len(pages)} notebooks in {sum(s for *_, s in pages):.1f} s; open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
