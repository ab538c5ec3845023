"""modality-lens model access: everything that touches a model (torch, transformers, nnsight)."""

import logging as _logging

from interp.exports import lazy_exports


class _QuietTorchvisionFallback(_logging.Filter):
    """Drop transformers' notice that an image processor falls back to its PIL version.

    Without torchvision (the CPU torch build used here has no matching one) every processor
    prints it; the PIL processors compute the same inputs, so the notice is noise.
    """

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def _install_filter() -> None:
    from transformers.utils import logging as hf_logging

    for handler in hf_logging._get_library_root_logger().handlers:
        if not any(isinstance(f, _QuietTorchvisionFallback) for f in handler.filters):
            handler.addFilter(_QuietTorchvisionFallback())


_install_filter()

# The public surface, imported on first use (PEP 562) so `import hooks.adapters` stays light.
_EXPORTS = {
    "load_vlm": "hooks.loading", "VLM": "hooks.loading", "ModelSourceError": "hooks.loading",
    "Adapter": "hooks.adapters", "register_adapter": "hooks.adapters", "supported_classes": "hooks.adapters",
    "PromptItem": "hooks.prompts", "Geometry": "hooks.prompts", "PassBatch": "hooks.prompts",
    "append_tokens": "hooks.prompts",
    "lens": "hooks.taps", "LensResult": "hooks.taps", "project": "hooks.taps",
    "tiny_model": "hooks.tiny",
    "patch": "hooks.interventions", "patching_sweep": "hooks.interventions", "knockout": "hooks.interventions",
    "instruction_direction": "hooks.interventions", "mean_difference": "hooks.interventions",
    "steer": "hooks.interventions", "steering_effect": "hooks.interventions",
    "steering_effects": "hooks.interventions", "PositionMap": "hooks.interventions",
    "PatchingError": "hooks.interventions",
    "knockout_heads": "hooks.interventions", "mean_ablate_heads": "hooks.interventions",
    "patch_heads": "hooks.interventions", "head_sweep": "hooks.interventions",
    "direct_logit_attribution": "hooks.interventions", "attention_mass": "hooks.interventions",
    "bridge_for": "hooks.tl_backend", "tl_lens": "hooks.tl_backend",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
