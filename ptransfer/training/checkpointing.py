"""Resumable training state with orbax, and the run-identity guard of a model dir.

Model dir layout:
  run_identity.json   what makes this run this run (backbone, task, prompt
                      length, init, seed, batch, lengths, optimizer); a model
                      dir holding a different run is refused, never mixed.
  checkpoints/<step>/ orbax CheckpointManager steps, each with
                      `state` (prompt [L, D], optimizer-state leaves, best
                      prompt so far, RNG key) and `meta` (JSON: step, data
                      position, best score and step). Kept: the last k and the
                      best by the eval metric.
Saves are synchronous and atomic (orbax writes to a temporary directory and
renames it), so a kill at any instant leaves the previous checkpoints usable.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import jax
import numpy as np

from ptransfer.core import fileio
from ptransfer.core.errors import CheckpointError

IDENTITY_FILE = "run_identity.json"
CHECKPOINT_SUBDIR = "checkpoints"


CONTINUATIONS = "continuations"  # run_identity.json: the settings a continued run changed


def check_run_identity(model_dir: str, identity: dict[str, Any], *, write: bool = True,
                       changeable: Sequence[str] = (), continued_at: int | None = None
                       ) -> dict[str, Any]:
    """Refuses a model dir that holds another run; else (with `write`) records this one.

    Call it with write=False before loading anything, and with write=True once
    the run has been validated (so a run that fails on bad input leaves no
    identity behind). Raises CheckpointError naming the settings that differ.

    `changeable`: settings this run may change (CONTINUE_WITH_CHANGES: the
    optimizer). When only those differ, the run continues: with `write` the new
    identity is recorded, and the old values go into its CONTINUATIONS list with
    the step the change takes effect at (`continued_at`). Returns {setting: old
    value} of what changed ({} when nothing did).
    """
    path = fileio.join(model_dir, IDENTITY_FILE)
    identity = json.loads(json.dumps(identity, sort_keys=True))  # normalize tuples etc.
    if fileio.exists(path):
        try:
            with fileio.open(path) as f:
                old = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path} is unreadable ({e}); this model dir is damaged. "
                                  "Choose a new MODEL_DIR or delete this one.") from None
        history = old.pop(CONTINUATIONS, [])
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff and not set(diff) <= set(changeable):
            details = "; ".join(f"{k}: {old.get(k)!r} there vs {identity.get(k)!r} now" for k in diff)
            hint = ""
            if set(diff) <= set(CHANGEABLE):
                hint = (" To continue that run from its latest checkpoint with these settings, "
                        "add --gin.CONTINUE_WITH_CHANGES=True.")
            raise CheckpointError(
                f"model dir {model_dir} holds a different run ({details}). Refusing to mix them: "
                "choose a new MODEL_DIR, or delete that directory to start over." + hint)
        changed = {k: old.get(k) for k in diff}
        if changed and write:
            record = {"at_step": continued_at, **{f"previous_{k}": v for k, v in changed.items()}}
            fileio.write_json(path, {**identity, CONTINUATIONS: [*history, record]},
                              sort_keys=True)
        return changed
    ckpt_dir = fileio.join(model_dir, CHECKPOINT_SUBDIR)
    if fileio.isdir(ckpt_dir) and fileio.listdir(ckpt_dir):
        raise CheckpointError(f"model dir {model_dir} has checkpoints but no {IDENTITY_FILE}, so "
                              "it cannot be shown to hold this run; choose a new MODEL_DIR.")
    if write:
        fileio.makedirs(model_dir, exist_ok=True)
        fileio.write_json(path, identity, sort_keys=True)
    return {}


# What CONTINUE_WITH_CHANGES may change in a model dir's run identity.
CHANGEABLE = ("optimizer",)


class Checkpointer:
    """Saves and restores the trainer state of one model dir.

    `state` is a dict of arrays: {'prompt': [L, D], 'best_prompt': [L, D],
    'opt_state': [leaves...], 'rng': uint32 [2]}; `meta` is JSON-able.
    """

    def __init__(self, model_dir: str, *, keep: int = 3, keep_best: bool = True):
        import orbax.checkpoint as ocp
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

        self._ocp = ocp
        policies = [pp.LatestN(n=max(1, keep))]
        if keep_best:
            policies.append(pp.BestN(get_metric_fn=lambda m: m["score"], reverse=False, n=1,
                                     keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            preservation_policy=pp.AnyPreservationPolicy(policies),
            enable_async_checkpointing=False,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.directory = fileio.abspath(fileio.join(model_dir, CHECKPOINT_SUBDIR))
        self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def save(self, step: int, state: dict, meta: dict, score: float | None = None) -> None:
        ocp = self._ocp
        if step in self._mgr.all_steps():
            return
        metrics = None if score is None or not np.isfinite(score) else {"score": float(score)}
        self._mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), metrics=metrics)
        self._mgr.wait_until_finished()

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        """State restored onto the shardings of `abstract_state` (ShapeDtypeStructs)."""
        ocp = self._ocp
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for damaged or mismatched data
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). Delete that step directory to "
                "resume from an earlier one, or choose a new MODEL_DIR.") from None
        return out["state"], out["meta"]

    def close(self) -> None:
        """Stops orbax's workers (idempotent). Left open at exit, they print a traceback."""
        if self._mgr is not None:
            self._mgr.close()
            self._mgr = None

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def abstract_like(tree, sharding) -> Any:
    """ShapeDtypeStructs of `tree`'s arrays, all placed with `sharding`."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)
