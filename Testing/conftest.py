"""Shared fixtures. Helpers to import live in realdata.py (every conftest.py is imported as `conftest`)."""

import pytest

from realdata import BRATS_DIR


@pytest.fixture(scope="session")
def brats_dir():
    if not BRATS_DIR.is_dir():
        pytest.fail(f"Real test data missing: {BRATS_DIR}. Check out ../shared beside the repository.")
    return BRATS_DIR
