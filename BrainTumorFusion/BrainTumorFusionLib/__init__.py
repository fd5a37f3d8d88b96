"""BrainTumorFusion core library: Qt-free, Slicer-free except for the scene adapter (scene.py)."""

__version__ = "0.1.0"
