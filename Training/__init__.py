"""BrainTumorFusion training: data discovery and splits, prepared cache, transforms, losses, the training loop
(single process or torchrun), evaluation with the library's own inference, and export into the model catalogue.

Command line: ``python -m Training prepare|train|evaluate|export ...`` (see Training/README.md).
Training imports the library (BrainTumorFusionLib); the library never imports Training.
"""

from .config import TrainConfig  # noqa: F401
