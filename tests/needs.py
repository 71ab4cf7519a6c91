"""What a test needs from outside the engine: skipped where it is missing on a
developer's machine (the reason names the install command), a failure under CI
(``CI`` set), which installs everything the tests use."""
import importlib
import os

import pytest


def missing(what, install):
    """``what`` is not here: fail under CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing under CI (install it with: {install})")
    pytest.skip(f"{what} is missing; install it with: {install}")


def module(name, install):
    """Import ``name``, or :func:`missing`."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package {name!r}", install)
