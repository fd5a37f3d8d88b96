"""Errors the user can act on. Every message says what is wrong and what to do."""


class BrainTumorFusionError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(BrainTumorFusionError):
    """The input volumes (roles, geometry, values) cannot be used as given."""


class ModelError(BrainTumorFusionError):
    """Unknown model, missing or corrupt weights, weights that do not fit the network."""


class OutputError(BrainTumorFusionError):
    """Results cannot be written where asked."""


class Cancelled(BrainTumorFusionError):
    """The user cancelled the run; nothing was written."""
