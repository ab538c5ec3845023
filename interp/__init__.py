"""modality-lens analysis package: pure functions over arrays (no transformers, no nnsight)."""

__version__ = "0.1.0"
