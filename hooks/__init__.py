"""modality-lens model access: everything that touches a model (torch, transformers, nnsight)."""

import logging as _logging


class _QuietTorchvisionFallback(_logging.Filter):
    """Drop transformers' notice that an image processor falls back to its PIL version.

    Without torchvision (the CPU torch build used here has no matching one) every processor
    prints it; the PIL processors compute the same inputs, so the notice is noise.
    """

    def filter(self, record: _logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def _install_filter() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    for handler in hf_logging._get_library_root_logger().handlers:
        if not any(isinstance(f, _QuietTorchvisionFallback) for f in handler.filters):
            handler.addFilter(_QuietTorchvisionFallback())


_install_filter()
