"""Assets shipped with modality-lens; installed as the package `modality_lens_data` (tiny_vlm/: the default model)."""
