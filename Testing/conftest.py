"""Shared fixtures. Helpers to import live in realdata.py (every conftest.py is imported as `conftest`)."""

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


@pytest.fixture(scope="session")
def brats_dir():
    if not BRATS_DIR.is_dir():
        pytest.fail(f"Real test data missing: {BRATS_DIR}. Check out ../shared beside the repository.")
    return BRATS_DIR
