"""Causal interventions across modalities: activation patching, attention knockout, steering.

Everything runs as one nnsight trace per forward on the VLM's wrapper (`vlm.nn`), batched,
with positions named through the prompt geometry (`hooks.prompts.Geometry`), never counted by
hand. The measured quantity is the one of the logit lens (METHOD §1.5) at the answer position:
`logit(text) - logit(vision)`, where the logit of an answer is the log-sum-exp of its
candidate ids' logits (`interp.logit_lens`), plus the log-probabilities of the candidates.

One module per job, each importing only the ones above it in this list:

- `trace`: the one trace (a plan of writes, saves and attention blocks), the sites
  (``resid_pre``, ``attn_out``, ``mlp_out``, ``resid_post``), `PatchingError`;
- `groups`: position groups ("image", "context", ..., "all", "after:<group>") and how a group
  maps from a source batch onto a target batch (`PositionMap`);
- `readouts`: `AnswerReadout` (what is measured), `InterventionResult`, and `kept_in_both`,
  the correct-in-both filter on two unimodal readouts;
- `patching`: activation patching (`patch`, `patching_sweep`);
- `attention`: attention knockout (`knockout`) by editing the 4-D attention mask;
- `directions`: steering directions (instructions, mean differences, `optimize_direction`);
- `steering`: adding a direction (`steer`) and its effect on text-following
  (`steering_effect`; the report is `interp.steering.SteeringReport`);
- `heads`: single attention heads as sites (`knockout_heads`, `mean_ablate_heads`,
  `patch_heads`, `head_sweep`); `attribution`: direct logit attribution per head and MLP
  (`direct_logit_attribution`); `attention_mass`: where each head looks (`attention_mass`).

The family-specific module names (a decoder layer's attention and MLP) come from the model's
adapter (`hooks.adapters.Adapter.attention`, `.cross_attention`, `.mlp`).

Candidate pairs with a teacher-forced prefix (`CandidatePair.prefix`) are handled by
appending the prefix to both batches (`hooks.prompts.append_tokens`); the "answer" group then
names the last forced token.
"""

from hooks.interventions.attention import attention_implementation, knockout
from hooks.interventions.directions import (
    DEFAULT_PLACEMENT,
    IMAGE_INSTRUCTION,
    INSTRUCTION_PLACEMENTS,
    TEXT_INSTRUCTION,
    OptimizedDirection,
    SteeringDirection,
    instruction_direction,
    mean_difference,
    optimize_direction,
    with_instruction,
)
from hooks.interventions.attention_mass import (QUERY_SETS, SPANS, AttentionMass, attention_mass, query_weights,
                                               span_membership)
from hooks.interventions.attribution import LogitAttribution, direct_logit_attribution, frozen_norm_scale
from hooks.interventions.groups import GROUPS, PositionMap, PositionSpec, map_positions, positions
from hooks.interventions.heads import (HeadSweep, check_heads, head_means, head_shape, head_sweep, knockout_heads,
                                      knockout_sets, layer_heads, mean_ablate_heads, patch_heads)
from hooks.interventions.patching import PatchingSweep, patch, patching_sweep
from hooks.interventions.readouts import AnswerReadout, InterventionResult, kept_in_both, read_answer, readout
from hooks.interventions.steering import steer, steering_effect, steering_effects
from hooks.interventions.trace import SITES, PatchingError

__all__ = [
    "SITES",
    "GROUPS",
    "TEXT_INSTRUCTION",
    "IMAGE_INSTRUCTION",
    "INSTRUCTION_PLACEMENTS",
    "DEFAULT_PLACEMENT",
    "PatchingError",
    "PositionSpec",
    "PositionMap",
    "AnswerReadout",
    "InterventionResult",
    "PatchingSweep",
    "SteeringDirection",
    "OptimizedDirection",
    "positions",
    "map_positions",
    "readout",
    "read_answer",
    "kept_in_both",
    "patch",
    "patching_sweep",
    "attention_implementation",
    "knockout",
    "with_instruction",
    "mean_difference",
    "instruction_direction",
    "optimize_direction",
    "steer",
    "steering_effect",
    "steering_effects",
    "HeadSweep",
    "head_shape",
    "layer_heads",
    "check_heads",
    "knockout_heads",
    "head_means",
    "mean_ablate_heads",
    "patch_heads",
    "knockout_sets",
    "head_sweep",
    "LogitAttribution",
    "direct_logit_attribution",
    "frozen_norm_scale",
    "SPANS",
    "QUERY_SETS",
    "AttentionMass",
    "attention_mass",
    "span_membership",
    "query_weights",
]
