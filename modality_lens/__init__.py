"""modality-lens, the application: joins the model side (`hooks`) and the analysis (`interp`).

The pipeline (cases -> three passes -> rows -> run directory -> summary), the run directory,
figures and report, the command line, the benchmark and the small-VLM training recipe.
Imports run one way: `modality_lens -> hooks -> interp`.
"""

from interp import __version__
from interp.exports import lazy_exports

# The public surface, imported on first use (PEP 562) so `import modality_lens` stays light.
_EXPORTS = {
    "run": "modality_lens.pipeline", "iter_rows": "modality_lens.pipeline",
    "process_batch": "modality_lens.pipeline", "finalize": "modality_lens.pipeline",
    "default_model": "modality_lens.pipeline", "case_item": "modality_lens.cases",
    "case_pair": "modality_lens.cases",
    "RunDir": "modality_lens.rundir",
    "draw_all": "modality_lens.plots", "write_report": "modality_lens.report",
    "run_perturb": "modality_lens.perturb", "run_consistency": "modality_lens.consistency",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
