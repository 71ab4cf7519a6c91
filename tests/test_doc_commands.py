"""Every shell command in README.md and docs/*.md runs (tests/test_docs.py runs
the Python blocks).

The ```bash blocks of a file run in order in one temporary folder, so that a
later command may read what an earlier one wrote; README.md's run first, and
each page of docs/ goes on in a copy of that folder (docs/interop.md reads back
the TensorBoard files of the README's training run). This interpreter
stands for ``.venv/bin/python`` and ``python``, this checkout is on
``PYTHONPATH``, ``benchmarks/`` is this checkout's and ``mpiexec`` the one the
``mpi`` extra installs. Each command falls under one rule of :data:`RULES`:

* ``run``: as written (diagrams, the explorer, the lecture's notebooks, the
  stand-in's count of a GPU step, AlexNet's towers on two ranks, reading the
  TensorBoard files back, generating and packing an ImageNet-like tree,
  evaluating a run);
* ``short``: as written with ``--epochs 1`` (training and the ReLU/tanh
  experiment take minutes as written; one epoch goes through every part: data,
  model, checkpoints, diagrams, the explorer page, TensorBoard files);
* ``help``: the script answers ``--help`` and knows every flag the command
  passes (the benchmarks, which run for minutes, scripts for a GPU, the
  TensorBoard server);
* ``syntax``: ``bash -n`` (the GPU session script, for a GPU);
* ``extras``: ``pip install -e '.[X,...]'``: each X is an extra of pyproject.toml;
* ``venv``: ``python3 -m venv .venv`` (CI's set-up does it);
* ``ci``: the README's test command (set-up, then pytest), which ``.ci/run``
  must run as written.

A command that no rule covers fails the test: a new command in the docs
needs a rule here.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest

from test_distributed import find_mpiexec
from test_docs import DOC_FILES, ROOT, python_blocks

BIN = os.path.dirname(sys.executable)

#: (pattern searched in the command, rule); the first that matches decides
RULES = [
    (r"^\(command -v chromium", "ci"),
    (r"-m pytest\b", "ci"),
    (r"^python3 -m venv \.venv$", "venv"),
    (r"pip install", "extras"),
    (r"-m models\.(train|relu_vs_tanh)\b", "short"),
    (r"-m models\.(imagenet_tree|pack|evaluate)\b", "run"),
    (r"-m visualize\b", "run"),
    (r"-m notebooks\.build\b", "run"),
    (r"benchmarks/gpu_cost\.py", "run"),
    (r"python3? -c ", "run"),
    (r"benchmarks/gpu_session\.sh", "syntax"),
    (r"benchmarks/\w+\.py", "help"),
    (r"tensorboard --logdir", "help"),
]


def commands(text):
    """The commands of the ```bash blocks: continuation lines joined, quoted
    newlines kept (``python -c "..."``), ``&&`` chains split, comments dropped.
    ``[(line, tokens)]``."""
    found = []
    for line, block in python_blocks(text, languages=("bash", "sh", "shell")):
        pending, start = "", line
        for k, row in enumerate(block.splitlines(), start=line + 1):
            if not pending:
                start = k
            pending += row + "\n"
            if row.endswith("\\"):
                pending = pending[:-2] + " "
                continue
            try:
                tokens = shlex.split(pending, comments=True)
            except ValueError:  # a quoted string goes on over the next line
                continue
            pending = ""
            chain, depth = [[]], 0
            for t in tokens:  # split at the && outside parentheses (a subshell stays whole)
                if t == "&&" and depth == 0:
                    chain.append([])
                    continue
                depth += len(t) - len(t.lstrip("(")) - (len(t) - len(t.rstrip(")")))
                chain[-1].append(t)
            found += [(start, part) for part in chain if part]
    return found


def text_of(tokens):
    return " ".join(tokens)


def rule_of(tokens):
    text = text_of(tokens)
    return next((rule for pattern, rule in RULES if re.search(pattern, text)), None)


def local(tokens):
    """The command with this checkout's interpreter, scripts and mpiexec."""
    out = []
    for t in tokens:  # (a python -c program is one token: its text is left alone)
        if t in (".venv/bin/python", "python", "python3"):
            t = sys.executable
        elif t.startswith(".venv/bin/"):
            t = os.path.join(BIN, t[len(".venv/bin/"):])
        elif t == "mpiexec":
            t = find_mpiexec()
        elif t.startswith("benchmarks/"):
            t = os.path.join(ROOT, t)
        out.append(t)
    return out


def one_epoch(tokens):
    if "--epochs" in tokens:
        k = tokens.index("--epochs")
        return tokens[:k + 1] + ["1"] + tokens[k + 2:]
    return tokens + ["--epochs", "1"]


def extras_of(tokens):
    spec = next(t for t in tokens if t.startswith(".["))
    return re.fullmatch(r"\.\[([\w,-]+)\]", spec).group(1).split(",")


def run(tokens, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(tokens, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{text_of(tokens)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


ALL = [(path, line, tokens) for path in DOC_FILES for line, tokens in commands(path.read_text())]


def test_every_command_has_a_rule():
    assert len(ALL) > 20
    missing = [f"{path.name}:{line}: {text_of(tokens)}" for path, line, tokens in ALL if rule_of(tokens) is None]
    assert not missing, "commands without a rule in RULES:\n" + "\n".join(missing)


def test_the_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    (line,) = [row for row in readme.splitlines() if row.startswith("(command -v chromium")]
    assert line.endswith("-m pytest -q") and line in (ROOT / ".ci" / "run").read_text().splitlines()


def run_commands(path, folder):
    """The commands of one file, in order, in ``folder`` (see the module docstring)."""
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for file, line, tokens in ALL:
        if file != path:
            continue
        where = f"{path.name}:{line}: {text_of(tokens)}"
        rule = rule_of(tokens)
        if rule in ("ci", "venv"):
            continue
        if rule == "extras":
            assert set(extras_of(tokens)) <= extras, where
        elif rule == "run":
            run(local(tokens), folder)
        elif rule == "short":
            run(local(one_epoch(tokens)), folder)
        elif rule == "syntax":
            run(["bash", "-n"] + local(tokens)[1:], folder)
        elif rule == "help":
            command = local(tokens)
            k = next(i for i, t in enumerate(command) if t.endswith(".py") or t.endswith("/tensorboard"))
            flags = [t.strip("[]") for t in tokens[k + 1:] if t.strip("[]").startswith("--")]
            shown = run(command[:k + 1] + ["--help"], folder)
            for flag in flags:
                assert re.search(rf"{re.escape(flag)}\b", shown), f"{where}: {flag} is not in its --help"
        else:
            pytest.fail(f"{where}: rule {rule!r}")


@pytest.fixture(scope="module")
def after_the_readme(tmp_path_factory):
    """A folder where the README's commands have run (the docs go on from there)."""
    folder = tmp_path_factory.mktemp("readme")
    run_commands(ROOT / "README.md", folder)
    return folder


def test_the_readme_commands_run(after_the_readme):
    assert (after_the_readme / "runs" / "alexnet-small-digits" / "checkpoint.npz").exists()


@pytest.mark.parametrize("path", [p for p in DOC_FILES if p.name != "README.md"], ids=lambda p: p.name)
def test_the_docs_commands_run(path, after_the_readme, tmp_path):
    folder = tmp_path / "work"
    shutil.copytree(after_the_readme, folder)  # each page goes on from the README, not from another page
    run_commands(path, folder)
