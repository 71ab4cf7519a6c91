"""pytest plugin: the CuPy stand-in around tests marked ``gpu`` (where real CuPy
does not import) and around tests that ask for the ``cupy_standin`` fixture."""
import pytest

import cupy_standin


@pytest.fixture
def cupy_standin_module():
    """The stand-in ``cupy`` module, active for the test (fails where real CuPy imports)."""
    with cupy_standin.active() as cupy:
        yield cupy


@pytest.fixture(autouse=True)
def _gpu_tests_on_the_standin(request):
    if request.node.get_closest_marker("gpu") is None or cupy_standin.real_cupy_importable():
        yield
        return
    with cupy_standin.active():
        yield
