"""Finding a Graphviz renderer and running it.

Diagrams are built as DOT text with the ``graphviz`` package. To turn DOT into
pictures we look for, in order:

1. ``dot`` on PATH (system Graphviz: every format, PDF included);
2. ``graphviz-pure``, the pip-installable Rust port of ``dot`` (SVG and PNG,
   no PDF), in the environment's scripts folder, next to ``sys.executable``,
   or on PATH.

So ``pip install graphviz-pure`` alone gives working SVG/PNG diagrams.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import graphviz

#: formats graphviz-pure writes (no PDF: that needs system Graphviz)
PURE_FORMATS = ("svg", "png", "jpg", "jpeg", "jpe", "gv", "xdot", "plain", "json", "dot")
RENDER_TIMEOUT_S = 600


class RendererNotFound(RuntimeError):
    """No Graphviz renderer for the requested format."""


class RenderError(RuntimeError):
    """The renderer ran but failed (its error output is in the message)."""


def _remedies(fmt):
    if fmt in PURE_FORMATS:
        return ("install system Graphviz (e.g. `apt-get install graphviz`, `brew install graphviz`), "
                "or `pip install graphviz-pure` (SVG and PNG)")
    return (f"format {fmt!r} needs system Graphviz: install it (e.g. `apt-get install graphviz`, "
            f"`brew install graphviz`); `pip install graphviz-pure` renders only SVG and PNG")


def _graphviz_pure_candidates():
    """Where a pip-installed graphviz-pure executable may be."""
    name = "graphviz-pure.exe" if os.name == "nt" else "graphviz-pure"
    places = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    found = [os.path.join(p, name) for p in places if p]
    on_path = shutil.which("graphviz-pure")
    if on_path:
        found.append(on_path)
    return found


def find_renderer(fmt="svg"):
    """The path of an executable that renders ``fmt``: system ``dot`` first,
    else ``graphviz-pure`` for the formats it supports. Raises
    :class:`RendererNotFound` naming both remedies."""
    fmt = fmt.lower()
    dot = shutil.which("dot")
    if dot:
        return dot
    if fmt in PURE_FORMATS:
        for path in _graphviz_pure_candidates():
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
        raise RendererNotFound(f"no Graphviz renderer found for {fmt!r}: neither `dot` on PATH nor the "
                               f"`graphviz-pure` executable. Remedy: {_remedies(fmt)}.")
    raise RendererNotFound(f"no renderer for {fmt!r} (`dot` is not on PATH). Remedy: {_remedies(fmt)}.")


def pipe_source(source, fmt="svg", engine="dot"):
    """Render DOT ``source`` (str) to ``fmt``; returns bytes."""
    exe = find_renderer(fmt)
    cmd = [exe, f"-T{fmt}"] + ([f"-K{engine}"] if engine and engine != "dot" else [])
    try:
        proc = subprocess.run(cmd, input=source.encode("utf-8"), capture_output=True, timeout=RENDER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RenderError(f"{os.path.basename(exe)} did not finish within {RENDER_TIMEOUT_S} s; "
                          f"try collapse=True for big graphs") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip()
        raise RenderError(f"{os.path.basename(exe)} -T{fmt} failed (exit {proc.returncode}): {err}")
    return proc.stdout


class Diagram(graphviz.Digraph):
    """A ``graphviz.Digraph`` that renders through :func:`find_renderer` (so it
    works with only ``graphviz-pure`` installed) and shows inline in Jupyter.

    ``d.source`` is the DOT text; ``d.pipe("svg")`` the rendered bytes;
    ``d.write("graph.png")`` renders to a file. ``d.meta`` holds what the
    builder knows about the picture (counts, selected inputs, ...).
    """

    def pipe(self, format=None, renderer=None, formatter=None, neato_no_op=None, quiet=False, *,
             engine=None, encoding=None):
        data = pipe_source(self.source, (format or self.format or "svg"), engine or self.engine)
        return data.decode(encoding) if encoding else data

    def _repr_svg_(self):
        return self.pipe("svg", encoding="utf-8")

    def _repr_mimebundle_(self, include=None, exclude=None, **_):
        return {"image/svg+xml": self._repr_svg_()}

    def write(self, path, format=None):
        """Render to ``path``; the format comes from the suffix unless given."""
        from .dot import render

        return render(self, path, format=format)


def new_diagram(name, title=None, rankdir="BT", **graph_attr):
    d = Diagram(name=name)
    d.format = "svg"
    d.meta = {}
    d.attr(rankdir=rankdir, **graph_attr)
    d.attr("node", fontname="Helvetica", fontsize="11")
    d.attr("edge", fontname="Helvetica", fontsize="9")
    if title:
        d.attr(label=title, labelloc="t", fontname="Helvetica", fontsize="14")
    return d
