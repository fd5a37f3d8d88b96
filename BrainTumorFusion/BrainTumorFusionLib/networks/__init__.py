"""The model zoo: the five papers' networks in 3D behind one interface, with a registry.

Segmentation networks: forward(x (B, 4, D, H, W) in MODALITIES order, present (B, 4) bool or None)
returns region logits (B, 3, D, H, W) for (whole tumor, tumor core, enhancing tumor) in eval mode, and
(logits, aux) in training mode, aux being the network's dataclass from outputs.py.
Grading network `cmg`: returns grade logits (B, 2) for (HGG, LGG); (logits, aux) in training mode.
"""

from .registry import available, build, register, task_of  # noqa: F401
