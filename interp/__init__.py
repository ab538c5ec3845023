"""modality-lens analysis package: pure functions over arrays (no transformers, no nnsight)."""

from interp.exports import lazy_exports

__version__ = "0.1.0"

# The public surface, imported on first use (PEP 562).
_EXPORTS = {
    "entropy": "interp.uncertainty", "dh_rel": "interp.uncertainty", "nmlp_confidence": "interp.uncertainty",
    "candidate_entropy": "interp.uncertainty", "one_minus_max_p": "interp.uncertainty",
    "top2_margin": "interp.uncertainty",
    "label_following": "interp.following", "tfr_vfr": "interp.following", "correct_in_both": "interp.following",
    "fit_following": "interp.curves", "robustness_split": "interp.curves",
    "count_switches": "interp.oscillation", "region_labels": "interp.oscillation",
    "summarise_oscillations": "interp.oscillation",
    "candidate_pair": "interp.candidates", "trajectory_from_logits": "interp.logit_lens",
    "trajectories": "interp.logit_lens",
    "summarise": "interp.summary", "SteeringReport": "interp.steering",
    "auroc": "interp.calibration", "brier_score": "interp.calibration",
    "expected_calibration_error": "interp.calibration", "vcd_scores": "interp.calibration",
    "weighted_vote": "interp.calibration", "majority_vote": "interp.calibration",
    "consistency_metrics": "interp.consistency", "rer": "interp.consistency", "cfr": "interp.consistency",
    "mmc": "interp.consistency", "mcnemar": "interp.consistency",
    "PASSES": "interp.vocabulary", "LABELS": "interp.vocabulary", "LAYER_CLASSES": "interp.vocabulary",
    "CONTROLS": "interp.vocabulary", "normalise_answer": "interp.vocabulary",
    "CaseError": "interp.errors", "ModalityLensError": "interp.errors",
}
__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__ = lazy_exports(__name__, _EXPORTS)
