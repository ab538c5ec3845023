"""modality-lens model access: everything that touches a model (torch, transformers, nnsight)."""
