"""Shared fixtures. Helpers to import live in the Testing package (Testing.realdata, Testing.plumbing, ...)."""

import importlib.util
import os

import pytest

from Testing.realdata import BRATS_DIR

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
