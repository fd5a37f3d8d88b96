"""The GUI process needs no torch before first use: Slicer loads the module with the PyTorch extension installed but
torch itself possibly not yet, and the first Apply installs it (dependencies.py). A fresh interpreter in which torch
and MONAI cannot be imported loads the module file, builds the module, its logic and its widget, and the dependency
check names both as missing."""

import subprocess
import sys
import textwrap

from Testing.realdata import MODULE_DIR

SCRIPT = textwrap.dedent("""
    import importlib.util, sys, types

    sys.modules["torch"] = sys.modules["monai"] = None  # as if not installed: imports fail, find_spec says None
    import pytest
    import slicer
    from Testing.slicer import gui_stubs

    scene = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    slicer.mrmlScene = scene
    gui_stubs.install(pytest.MonkeyPatch(), app)
    spec = importlib.util.spec_from_file_location("BrainTumorFusion", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules["BrainTumorFusion"] = module
    spec.loader.exec_module(module)
    module.BrainTumorFusion(types.SimpleNamespace())
    widget = module.BrainTumorFusionWidget()
    widget.setup()
    from BrainTumorFusionLib.app import dependencies
    print("MISSING", dependencies.missing_packages())
""")


def test_module_logic_and_dependency_check_load_without_torch():
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(MODULE_DIR / "BrainTumorFusion.py")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MISSING ['torch', 'monai']" in done.stdout
