"""Project exception types. Each is raised at a boundary and its message names the fix."""

from __future__ import annotations


class ModalityLensError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class ArgumentError(ModalityLensError, ValueError):
    """An argument (a CLI option or an API keyword) is of the wrong type or out of range."""


class CaseError(ModalityLensError, ValueError):
    """A conflict case (or its answers) is malformed: the message names the rule that failed."""


class UnsupportedModelError(ModalityLensError):
    """A model class has no adapter: the message lists the supported classes and how to add one."""


class ModelSourceError(ModalityLensError):
    """The model source (directory, hub id, device) cannot be loaded as asked."""


class SelfCheckError(ModalityLensError):
    """The load-time check that the last layer's lens equals the model's logits failed."""


class DatasetError(ModalityLensError):
    """A dataset folder or import source is unusable (missing images, bad JSON, ...)."""


class RunDirError(ModalityLensError):
    """A run directory cannot be used as asked (e.g. --resume on a run of another model)."""
