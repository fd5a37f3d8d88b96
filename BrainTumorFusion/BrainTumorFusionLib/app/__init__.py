"""The front ends over the core: the command line and batch (with per-case records), and the Slicer-facing scene
adapter, logic, background process and first-use installation."""
