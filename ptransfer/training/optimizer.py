"""Optimizers for the prompt (optax), as plain configs so a run can be compared and resumed.

Presets:
  adafactor      Lester et al. (2021) / T5X prompt tuning: Adafactor with a
                 constant learning rate 0.3, beta2 decay 0.8, weight decay 1e-5,
                 update clipping 1.0 and parameter scaling off.
  adamw_t5       AdamW lr 5e-3, the official Prompt-Transferability setting for T5.
  adamw_roberta  AdamW lr 1e-4, its setting for RoBERTa-style encoders.

Options shared by all: `warmup_steps` (linear ramp from 0 to the learning
rate, then constant) and `clip_norm` (global-norm gradient clipping before
the optimizer; None = off).
"""

from __future__ import annotations

import dataclasses

import gin
import numpy as np
import optax

from ptransfer.core.errors import ConfigError, close_matches_hint


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Everything that defines the prompt optimizer (part of a run's identity)."""

    name: str = "adafactor"            # adafactor | adamw
    learning_rate: float = 0.3
    warmup_steps: int = 0
    clip_norm: float | None = None
    weight_decay: float = 1e-5
    # Adafactor
    decay_rate: float = 0.8
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = False
    # AdamW
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "OptimizerConfig":
        """self, or one ConfigError: the rate must be a finite positive float32 (it is
        stored as one: 1e39 would be inf, 1e-46 zero), clip_norm > 0, warmup >= 0."""
        lr = self.learning_rate
        ok = isinstance(lr, (int, float)) and not isinstance(lr, bool)
        with np.errstate(over="ignore"):
            lr32 = np.float32(lr) if ok else None
        if lr32 is None or not (np.isfinite(lr32) and lr32 > 0):
            raise ConfigError(f"learning rate {lr!r} is not a finite positive float32 number; "
                              "give e.g. --gin.LEARNING_RATE=0.3 (between 1.2e-38 and 3.4e38).")
        if self.warmup_steps < 0 or (self.clip_norm is not None and not self.clip_norm > 0):
            raise ConfigError(f"optimizer settings out of range: warmup_steps={self.warmup_steps}, "
                              f"clip_norm={self.clip_norm}; clip_norm must be > 0 (or None), "
                              "warmup_steps >= 0.")
        return self


PRESETS: dict[str, OptimizerConfig] = {
    "adafactor": OptimizerConfig(),
    "adamw_t5": OptimizerConfig(name="adamw", learning_rate=5e-3, weight_decay=1e-5),
    "adamw_roberta": OptimizerConfig(name="adamw", learning_rate=1e-4, weight_decay=1e-5),
}


@gin.configurable(module="ptransfer")
def optimizer_config(preset: str = "adafactor", learning_rate: float | None = None,
                     warmup_steps: int = 0, clip_norm: float | None = None,
                     weight_decay: float | None = None) -> OptimizerConfig:
    """A preset with optional overrides (None keeps the preset's value)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown optimizer preset {preset!r}." + close_matches_hint(preset, PRESETS))
    cfg = PRESETS[preset]
    changes = {"warmup_steps": int(warmup_steps), "clip_norm": clip_norm}
    if learning_rate is not None:
        changes["learning_rate"] = (float(learning_rate) if isinstance(learning_rate, (int, float))
                                    else learning_rate)  # a string is refused by validate()
    if weight_decay is not None:
        changes["weight_decay"] = float(weight_decay)
    return dataclasses.replace(cfg, **changes).validate()


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Constant learning rate after an optional linear warmup."""
    if cfg.warmup_steps <= 0:
        return optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
         optax.constant_schedule(cfg.learning_rate)],
        boundaries=[cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The optax transformation for `cfg` (clipping first, then the optimizer).

    Without warmup the learning rate lives in the optimizer state
    (`optax.inject_hyperparams`), so one compiled step serves every rate.
    """
    cfg.validate()
    if cfg.name == "adafactor":
        def factory(learning_rate):
            return optax.adafactor(
                learning_rate=learning_rate, decay_rate=cfg.decay_rate,
                multiply_by_parameter_scale=cfg.multiply_by_parameter_scale,
                clipping_threshold=cfg.clipping_threshold,
                weight_decay_rate=cfg.weight_decay or None)
    elif cfg.name == "adamw":
        def factory(learning_rate):
            return optax.adamw(learning_rate=learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
    else:
        raise ConfigError(f"unknown optimizer {cfg.name!r}; use 'adafactor' or 'adamw'.")
    if cfg.warmup_steps > 0:
        opt = factory(learning_rate_schedule(cfg))
    else:
        opt = optax.inject_hyperparams(factory)(learning_rate=cfg.learning_rate)
    if cfg.clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt


def compile_key(cfg: OptimizerConfig) -> str:
    """What the compiled update depends on (the learning rate is state when injected)."""
    import json

    d = cfg.to_dict()
    if cfg.warmup_steps <= 0:
        d.pop("learning_rate")
    return json.dumps(d, sort_keys=True)


# ---- AdamW moments (carried from a source run into TPT) -----------------------------

def _is_adam(x) -> bool:
    return isinstance(x, optax.ScaleByAdamState)


def adam_moments(opt_state):
    """(mu, nu) of the one ScaleByAdamState in `opt_state` (arrays shaped like the
    prompt [L, D]), or None for an optimizer without Adam moments (Adafactor)."""
    import jax

    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_adam) if _is_adam(x)]
    if len(found) != 1:
        return None
    return found[0].mu, found[0].nu


def with_adam_moments(opt_state, mu, nu):
    """`opt_state` (a fresh AdamW state) with its moments replaced by `mu`, `nu` and the
    step counter left at zero, as the official Prompt-Transferability code continues
    a source run (so the first updates are bias-corrected as step 1, 2, ...)."""
    import jax
    import jax.numpy as jnp

    if adam_moments(opt_state) is None:
        raise ConfigError("the optimizer state has no AdamW moments to replace.")

    def swap(x):
        if not _is_adam(x):
            return x
        if x.mu.shape != np.shape(mu) or x.nu.shape != np.shape(nu):
            raise ConfigError(f"source AdamW moments are {np.shape(mu)}, this prompt is "
                              f"{x.mu.shape}; the source must have the same prompt length.")
        return x._replace(mu=jnp.asarray(mu, x.mu.dtype), nu=jnp.asarray(nu, x.nu.dtype))

    return jax.tree_util.tree_map(swap, opt_state, is_leaf=_is_adam)


# ---- continuing with changed settings (CONTINUE_WITH_CHANGES) -----------------------

def continued_state(restored, fresh):
    """The optimizer state a run continues with after its settings changed.

    `restored`: the checkpoint's state under the old settings; `fresh`: a new
    state under the new ones. Same structure (e.g. only the learning rate
    changed): the restored moments with the new injected hyperparameters (the
    learning rate is state under `inject_hyperparams`, so it must be replaced).
    Otherwise (another optimizer, clipping or warmup switched): `fresh`.
    """
    import jax

    def is_inject(x):  # optax's (Stateful)InjectHyperparamsState
        return hasattr(x, "hyperparams") and hasattr(x, "_replace")

    if jax.tree_util.tree_structure(restored) != jax.tree_util.tree_structure(fresh):
        return fresh
    return jax.tree_util.tree_map(
        lambda r, f: r._replace(hyperparams=f.hyperparams) if is_inject(r) else r,
        restored, fresh, is_leaf=is_inject)
