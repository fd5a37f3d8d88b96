"""`python -m BrainTumorFusionLib ...`, `PythonSlicer .../BrainTumorFusionLib/__main__.py ...` and
`Slicer --no-main-window --python-script .../BrainTumorFusionLib/__main__.py segment ...` all land here."""

import os
import sys

if not __package__:  # run as a file: make the library importable from its own folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from BrainTumorFusionLib.app.cli import main  # noqa: E402

sys.exit(main())
