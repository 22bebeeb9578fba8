"""How the diversity penalty of a batch enters the loss: --diversity-form.

The model returns the mean over the batch's M = B x N frames of Q (Eq. 9) or Q' (Eq. 10)
(STAOutput.diversity_loss).  The paper says only that Q "will be multiplied by a coefficient";
the authors' released code adds reg = sqrt(sum over the batch's frames of ||R R^T - I||_F^2 +
1e-5) at weight 1, which is sqrt(M x mean + 1e-5).  Its gradient is the mean's times
M / (2 reg): at the start (mean ~ 30 for six identical heads, M = 48) about 0.6x the mean's,
and growing as Q falls, so the heads are still pushed apart once they nearly are.
"""
from __future__ import annotations

import torch

DIVERSITY_FORMS = ("mean", "authors")


def diversity_term(mean_penalty: torch.Tensor, frames: int, form: str = "mean") -> torch.Tensor:
    """The loss term of the penalty `mean_penalty` (the mean over `frames` frames), before its weight:
    "mean" as it is, "authors" sqrt(frames x mean + 1e-5)."""
    if form == "mean":
        return mean_penalty
    if form == "authors":
        return torch.sqrt(mean_penalty * frames + 1e-5)
    raise ValueError(f"diversity form must be one of {DIVERSITY_FORMS}, got {form!r}")
