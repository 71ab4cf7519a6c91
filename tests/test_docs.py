"""Every ```python block in README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (a later block may use
what an earlier one defined), in a temporary working directory, so files they
write land there. A block that fails names the file and the line its fence
opens on. A block may not hold ``...`` (a placeholder that would run as a
no-op and hide missing code).
"""
import io
import pathlib
import re
import tokenize
import traceback

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^\n`]*)$")


PYTHON = ("python", "py", "python3")


def python_blocks(text, languages=PYTHON):
    """``[(line number of the opening fence, source)]`` of the ```python blocks
    (of the blocks whose info string names one of ``languages``)."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip().split(), i
        body, i = [], i + 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and not lines[i].strip().strip(fence[0])):
            body.append(lines[i][len(m["indent"]):] if lines[i].startswith(m["indent"]) else lines[i])
            i += 1
        i += 1  # the closing fence
        if info and info[0].lower() in languages:
            blocks.append((start + 1, "\n".join(body) + "\n"))
    return blocks


def ellipsis_lines(source):
    """Lines where ``...`` appears as code (not inside a string or comment)."""
    found = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.OP and tok.string == "...":
                found.append(tok.start[0])
    except (tokenize.TokenError, SyntaxError):  # not Python: compiling the block reports where
        pass
    return found


def test_block_extraction():
    text = ("intro\n```python\na = 1\n```\n\n```bash\nls\n```\n  ```python\n  b = a + 1\n  ```\n"
            "````python\nc = '```'\n````\n")
    assert python_blocks(text) == [(2, "a = 1\n"), (9, "b = a + 1\n"), (12, "c = '```'\n")]
    assert ellipsis_lines("x = 1\ny = ...\nz = '...'  # ...\n") == [2]
    assert ellipsis_lines("x = (1,\n") == []


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    name = path.relative_to(ROOT)
    namespace = {"__name__": "__docs__"}
    for line, source in python_blocks(path.read_text()):
        where = f"{name}, the python block at line {line}"
        dots = ellipsis_lines(source)
        if dots:
            pytest.fail(f"{where}: `...` on line(s) {[line + d for d in dots]}; examples must run as written")
        try:
            # padded so that tracebacks give the line numbers of the file itself
            exec(compile("\n" * line + source, str(path), "exec"), namespace)  # noqa: S102 - the docs' own code
            continue
        except Exception as exc:  # reported below, outside the handler, without this frame
            error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
        pytest.fail(f"{where} fails:\n{error}", pytrace=False)
