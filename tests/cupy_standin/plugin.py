"""pytest plugin: the CuPy stand-in around tests marked ``gpu`` wherever no GPU is
usable (see :func:`cupy_standin.gpu_tests_run_on`; real CuPy installed or not)
and around tests that ask for the ``cupy_standin`` fixture."""
import pytest

import cupy_standin


@pytest.fixture
def cupy_standin_module():
    """The stand-in ``cupy`` module, active for the test."""
    with cupy_standin.active() as cupy:
        yield cupy


@pytest.fixture(autouse=True)
def _gpu_tests_on_the_standin(request):
    if request.node.get_closest_marker("gpu") is None or cupy_standin.gpu_tests_run_on() == "gpu":
        yield
        return
    with cupy_standin.active():
        yield


def pytest_report_header(config):
    return cupy_standin.gpu_tests_reason()
