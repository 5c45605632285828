"""The naive rank-classification method the evaluation benchmark compares against.

What T5X and most codebases do: repeat each input once per label word and run
the ordinary teacher-forced likelihood on the B*C rows, so the shared part
(prompt + input) is encoded C times instead of once.
"""

from __future__ import annotations

import jax.numpy as jnp


def naive_score_candidates(backbone, params, prompt, inputs, inputs_mask, candidates,
                           candidates_mask):
    """float32 [B, C] from B*C repeated rows (same contract as `Backbone.score_candidates`).

    inputs, inputs_mask [B, Li]; candidates, candidates_mask [C, Lt]; prompt [P, D] or None.
    """
    b, c = inputs.shape[0], candidates.shape[0]
    batch = {
        "inputs": jnp.repeat(inputs, c, axis=0),            # row b*C + j = example b
        "inputs_mask": jnp.repeat(inputs_mask, c, axis=0),
        "targets": jnp.tile(candidates, (b, 1)),             # row b*C + j = label j
        "targets_mask": jnp.tile(candidates_mask, (b, 1)),
    }
    return backbone.target_log_likelihood(params, prompt, batch).reshape(b, c)
