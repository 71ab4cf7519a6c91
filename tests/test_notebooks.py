"""The lecture's notebooks (``notebooks/*.md``, jupytext Markdown) run, top to
bottom, each in a fresh kernel of this interpreter (nbclient), and render to
HTML pages (nbconvert) as ``python -m notebooks.build`` does.

Their cells assert the slides' formulas against the engine (a naive loop
against ``conv2d``, finite differences against every gradient, a Hessian
against its products), so a wrong rule fails here. Each notebook is executed
once per session (the fixture below); a cell may run at most
:data:`CELL_TIMEOUT_S` seconds. The whole set takes about a minute on 2 cores.
"""
import re
import sys

import nbformat
import pytest

from test_docs import ROOT

sys.path.insert(0, str(ROOT))  # notebooks/ is run from the checkout, not installed
from notebooks import build  # noqa: E402

CELL_TIMEOUT_S = 180
SOURCES = build.sources()
NAMES = [p.name for p in SOURCES]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Notebook name -> the executed notebook, or the exception its run raised."""
    from nbclient.exceptions import CellExecutionError

    results = {}
    with build.this_kernel():
        for path in SOURCES:
            nb = build.read(path)
            try:
                build.execute(nb, tmp_path_factory.mktemp(path.stem), timeout=CELL_TIMEOUT_S)
                results[path.name] = nb
            except CellExecutionError as exc:
                results[path.name] = exc
    return results


def outputs_of(nb, kind=None):
    found = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    return found if kind is None else [o for o in found if kind in o.get("data", {})]


def test_eight_parts_in_order_each_linking_to_the_next():
    assert [n[:2] for n in NAMES] == [f"{k:02d}" for k in range(1, 9)]
    for this, after in zip(SOURCES, SOURCES[1:]):
        text = this.read_text()
        assert f"]({after.name})" in text, f"{this.name} does not link to {after.name}"
        assert f"]({this.name})" in after.read_text(), f"{after.name} does not link back to {this.name}"


def test_sources_store_no_outputs():
    for path in SOURCES:
        text = path.read_text()
        nb = build.read(path)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert len(code) >= 4, path.name
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert "image/png" not in text and "execution_count" not in text and "```output" not in text, path.name
        nbformat.validate(nb)
    assert not list((ROOT / "notebooks").glob("*.ipynb")), "only the Markdown sources are kept"


def test_readme_leads_to_the_first_notebook_and_the_command():
    readme = (ROOT / "README.md").read_text()
    assert f"(notebooks/{NAMES[0]})" in readme
    assert "python -m notebooks.build --out" in readme


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_its_checks_pass(executed, name):
    nb = executed[name]
    if isinstance(nb, Exception):
        pytest.fail(f"{name}: {nb}")
    errors = [o for o in outputs_of(nb) if o.output_type == "error"]
    assert not errors
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "every cell ran"
    assert any("assert " in c.source for c in code), "a notebook checks what it shows"
    assert outputs_of(nb, "image/svg+xml") or outputs_of(nb, "image/png"), "each part draws something"


def test_the_trained_network_is_explored_inline(executed):
    nb = executed["06-training-digits.md"]
    assert not isinstance(nb, Exception), nb
    (page,) = [o["data"]["text/html"] for o in outputs_of(nb, "text/html") if "graphdiff-explorer" in o["data"]["text/html"]]
    assert page.startswith('<iframe class="graphdiff-explorer"') and "gd-data" in page
    printed = "".join(o.get("text", "") for o in outputs_of(nb) if o.output_type == "stream")
    final = re.findall(r"validation loss [\d.]+, error ([\d.]+)%", printed)
    assert len(final) == 3 and float(final[-1]) < 25


def test_pages_render_with_links_between_them(executed, tmp_path):
    for name in NAMES:
        nb = executed[name]
        assert not isinstance(nb, Exception), nb
        page = build.to_html(nb)
        assert "<html" in page and build.title_of(nb) in page and build.PAGE_STYLE in page
        links = set(re.findall(r'href="(\d\d-[\w-]+\.html)"', page))
        assert links and links <= {n.replace(".md", ".html") for n in NAMES}, (name, links)
        assert ".md\"" not in page, "links to sources became links to pages"
    index = build.index_html([(n.replace(".md", ".html"), n, 0.0) for n in NAMES])
    assert all(n.replace(".md", ".html") in index for n in NAMES)


def test_a_failing_check_fails_the_notebook(tmp_path):
    from nbclient.exceptions import CellExecutionError

    source = tmp_path / "broken.md"
    source.write_text("# broken\n\n```python\nimport graphdiff as gd\nassert 1 + 1 == 3, 'wrong sum'\n```\n")
    nb = build.read(source)
    with build.this_kernel(), pytest.raises(CellExecutionError, match="wrong sum"):
        build.execute(nb, tmp_path, timeout=60)


def test_the_command_names_an_unknown_notebook(tmp_path, capsys):
    assert build.main(["--out", str(tmp_path / "site"), "99"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no notebook") and "99" in err[0]
