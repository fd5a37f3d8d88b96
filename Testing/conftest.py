"""Shared fixtures. Helpers to import live in realdata.py (every conftest.py is imported as `conftest`)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from realdata import BRATS_DIR


def _import_slicer_without_this_folder():
    """The slicer-core meta package takes every `slicer/` folder on sys.path as a part of itself and imports
    each module in it. Testing/ is on sys.path (for realdata and plumbing), so Testing/slicer/'s test modules
    and helpers would run as `slicer.<name>`: import slicer once without Testing/ on the path."""
    here = Path(__file__).resolve().parent
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    try:
        import slicer  # noqa: F401
    except ImportError:  # tests that need it say so
        pass
    finally:
        sys.path[:] = saved


_import_slicer_without_this_folder()


# `make test-slicer` sets this: the environment that mirrors Slicer's Python, without the development venv's extras.
SLICER_ENVIRONMENT = os.environ.get("BTF_SLICER_ENVIRONMENT") == "1"


def pytest_runtest_setup(item):
    """@pytest.mark.needs("package", ...): skipped in the Slicer-like environment when a package is missing there (a
    package of the development venv only), an error anywhere else (a broken `make setup`)."""
    for marker in item.iter_markers("needs"):
        missing = [name for name in marker.args if importlib.util.find_spec(name) is None]
        if missing:
            message = f"needs {', '.join(missing)} (development venv only: requirements-dev.txt)"
            if SLICER_ENVIRONMENT:
                pytest.skip(message)
            pytest.fail(f"{message}, which is not installed: run `make setup`")


@pytest.fixture(scope="session")
def brats_dir():
    if not BRATS_DIR.is_dir():
        pytest.fail(f"Real test data missing: {BRATS_DIR}. Check out ../shared beside the repository.")
    return BRATS_DIR
