"""The packages import one way: the engine (graphdiff) imports neither
visualize nor models; the visualize library imports graphdiff alone; models
(the course's networks, training, ``python -m visualize``'s code in
models.draw) imports both. ``visualize/__main__.py``, the command's entry
point, is the one module of visualize that hands over to models.

Each module is imported alone in a fresh interpreter, so that what another
module brought in cannot hide what this one imports."""
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import graphdiff
import visualize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VISUALIZE = sorted("visualize." + m.name for m in pkgutil.iter_modules(visualize.__path__) if m.name != "__main__")
GRAPHDIFF = sorted(m.name for m in pkgutil.walk_packages(graphdiff.__path__, "graphdiff."))


def loaded_packages(*modules):
    """The top-level packages among ``visualize`` and ``models`` in
    ``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = ("import importlib, json, sys\n"
            f"for m in {list(modules)!r}:\n"
            "    importlib.import_module(m)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'visualize', 'models'})))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_lists_of_modules_are_the_packages_own():
    assert {"visualize.dot", "visualize.explore", "visualize.update_step"} <= set(VISUALIZE)
    assert {"graphdiff.compiler", "graphdiff.autodiff", "graphdiff.onnx"} <= set(GRAPHDIFF)


@pytest.mark.parametrize("module", VISUALIZE)
def test_a_visualize_module_does_not_import_models(module):
    assert loaded_packages(module) == ["visualize"]


def test_graphdiff_imports_neither_visualize_nor_models():
    assert loaded_packages(*GRAPHDIFF) == []


def test_the_checker_sees_an_import_of_models():
    # the one module of visualize that does import models: the command's entry point
    assert loaded_packages("visualize.__main__") == ["models", "visualize"]
