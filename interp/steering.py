"""What steering did to text-following: one row per alpha, and the shifts against alpha = 0.

`hooks.interventions.steering_effect` runs the model and fills a `SteeringReport`; everything
here is pure (plain Python and the `interp` statistics): the TFR shift and its paired
bootstrap interval (`interp.following.tfr_shift_ci`), the balance point's shift, and the
report's JSON and text forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interp.following import tfr_shift_ci
from interp.results import FollowingCurve, FollowingRatios

__all__ = ["SteeringRow", "SteeringReport"]


@dataclass(frozen=True)
class SteeringRow:
    """One alpha: labels of every case, ratios and curve over the kept cases."""

    alpha: float
    labels: tuple[str, ...]
    ratios: FollowingRatios
    curve: FollowingCurve
    mean_logit_diff: float


@dataclass(frozen=True)
class SteeringReport:
    """Steering's effect on text-following: one row per alpha (0 = unsteered baseline).

    `kept`: cases answered correctly in both unimodal passes (all cases when the filter is
    off); `dh_rel` from the unsteered unimodal passes (steering changes only the conflict
    answer, so the x-axis of the following curve stays put and the curve's shift is the
    balance point's).
    """

    layers: tuple[int, ...]
    where: str
    n_cases: int
    kept: tuple[bool, ...]
    dh_rel: tuple[float, ...]
    rows: tuple[SteeringRow, ...]

    @property
    def n_kept(self) -> int:
        return sum(self.kept)

    def row(self, alpha: float) -> SteeringRow:
        for r in self.rows:
            if r.alpha == alpha:
                return r
        raise KeyError(f"alpha {alpha} was not run; alphas: {[r.alpha for r in self.rows]}")

    def tfr_shift(self, alpha: float) -> float | None:
        """TFR(alpha) - TFR(0), or None when either is undefined."""
        a, b = self.row(alpha).ratios.tfr, self.row(0.0).ratios.tfr
        return None if a is None or b is None else a - b

    def tfr_shift_ci(self, alpha: float, *, level: float = 0.95, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float] | None:
        """Paired percentile bootstrap interval of `tfr_shift(alpha)`: the kept cases are
        resampled together for both alphas (each case answers under every alpha). None when the
        shift is undefined or a resample leaves either TFR undefined in more than 5% of draws."""
        return tfr_shift_ci(self.row(alpha).labels, self.row(0.0).labels, self.kept, level=level, n_boot=n_boot,
                            seed=seed)

    def balance_shift(self, alpha: float) -> float | None:
        """balance point(alpha) - balance point(0), or None when either has none."""
        a, b = self.row(alpha).curve.balance_point, self.row(0.0).curve.balance_point
        return None if a is None or b is None else a - b

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers), "where": self.where, "n_cases": self.n_cases, "n_kept": self.n_kept,
            "rows": [{"alpha": r.alpha, "tfr": r.ratios.tfr, "tfr_shift": self.tfr_shift(r.alpha),
                      "tfr_shift_ci": self.tfr_shift_ci(r.alpha) if r.alpha != 0 else None,
                      "balance_point": r.curve.balance_point, "balance_shift": self.balance_shift(r.alpha),
                      "curve_status": r.curve.status, "mean_logit_diff": r.mean_logit_diff,
                      "ratios": r.ratios.to_dict(), "labels": list(r.labels)} for r in self.rows],
        }

    def __str__(self) -> str:
        lines = [f"steering at layers {list(self.layers)} ({self.where}); {self.n_kept} of {self.n_cases} cases kept"]
        for r in self.rows:
            tfr = "n/a" if r.ratios.tfr is None else f"{r.ratios.tfr:.3f}"
            bp = "n/a" if r.curve.balance_point is None else f"{r.curve.balance_point:+.3f}"
            if r.alpha != 0:
                shift, ci = self.tfr_shift(r.alpha), self.tfr_shift_ci(r.alpha)
                tfr += " (shift n/a)" if shift is None else f" (shift {shift:+.3f}" + (
                    f", 95% CI {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ", no CI)")
            lines.append(f"  alpha {r.alpha:+g}: TFR {tfr} (text {r.ratios.n_text}, vision {r.ratios.n_vision}, "
                         f"other {r.ratios.n_other}), balance point {bp} [{r.curve.status}], "
                         f"mean logit diff {r.mean_logit_diff:+.3f}")
        return "\n".join(lines)
