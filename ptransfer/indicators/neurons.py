"""ON: the overlap of activated FFN neurons between two prompts.

Each prompt is run through the frozen backbone on the same stimulus;
`Backbone.ffn_activations` returns the FFN intermediate activations
[num_layers, B, S, F]. Which value is binarized is the capture's `rule`
(`Backbone.ffn_activation_rules`): for ReLU/GELU FFNs the activation, > 0
exactly when the pre-activation is (the paper's "activated" neuron); for gated
FFNs (SwiGLU, GeGLU) by default the gate's pre-activation ("gate": the gate
is open), with the product act(gate) * up ("product") as an option. They are
binarized (> threshold, default 0),
restricted to chosen layers and positions, flattened over (layer, example,
position, neuron), and compared by the cosine of the binary vectors:

    ON(A, B) = |A ∩ B| / sqrt(|A| |B|)      (0 when either set is empty)

Positions (the S axis the backbone returns):
  "last"    the last position, the paper's choice: T5 exposes only the first
            decoder step (S = 1), a decoder-only model the prompt + input
            positions, whose last column is the last input token (inputs are
            left-padded).
  "all"     every position; padded input columns never count as activated.
  "prompt"  the first L positions (the prompt itself); only for backbones that
            expose prompt positions (decoder-only), else ConfigError.
  (i, j..)  explicit position indices.

Capture jits one function per `ActivationCapture` and reuses it for every
prompt (prompts and the threshold are traced inputs, so swapping them never
recompiles); `ActivationCapture.compilations` counts the compiled variants.
The masks are kept per layer ([K, N, B, S, F] bool), so ON of every layer
window comes from one capture.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ptransfer.core.errors import ConfigError

POSITION_MODES = ("last", "all", "prompt")

LayerSpec = None | tuple[int, int] | Sequence[int]  # all | window [start, stop) | indices


# ---- pure math ---------------------------------------------------------------

def binarize(acts, threshold: float = 0.0):
    """acts [...] -> bool [...]: a neuron is activated when its value > threshold."""
    return acts > threshold


def layer_windows(num_layers: int, size: int = 3) -> list[tuple[int, int]]:
    """Consecutive, non-overlapping windows [start, stop) of `size` layers.

    When `num_layers` is not a multiple of `size`, the last window holds the
    remaining (fewer) layers, so every layer belongs to exactly one window.
    """
    if size < 1 or size > num_layers:
        raise ConfigError(f"layer window size {size} does not fit a model with {num_layers} "
                          f"layers; use 1..{num_layers}.")
    return [(s, min(s + size, num_layers)) for s in range(0, num_layers, size)]


def layer_indices(layers: LayerSpec, num_layers: int, backbone: str = "the backbone") -> list[int]:
    """Layer indices chosen by `layers`.

    None: all layers; a tuple (start, stop): the half-open window of a
    `layer_windows` entry; a list or range: explicit indices. Raises
    ConfigError when any layer is outside [0, num_layers) or none is chosen.
    """
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, tuple):
        if len(layers) != 2:
            raise ConfigError(f"a layer window is (start, stop), got {layers!r}; pass explicit "
                              "layer indices as a list.")
        idx = list(range(int(layers[0]), int(layers[1])))
    else:
        idx = [int(i) for i in layers]
    if not idx or any(not 0 <= i < num_layers for i in idx):
        raise ConfigError(f"layer window {layers!r} is outside {backbone}, which has {num_layers} "
                          f"layers (indices 0..{num_layers - 1}); windows of 3: "
                          f"{layer_windows(num_layers, min(3, num_layers))}.")
    return idx


def binary_cosine(a, b) -> float:
    """Cosine of two binary vectors (any shapes with the same size): |A∩B| / sqrt(|A||B|)."""
    a = np.asarray(a, bool).reshape(-1)
    b = np.asarray(b, bool).reshape(-1)
    if a.size != b.size:
        raise ConfigError(f"binary vectors of different sizes ({a.size} vs {b.size}) cannot be "
                          "compared; capture them with the same backbone, stimulus and positions.")
    na, nb = int(a.sum()), int(b.sum())
    return 0.0 if na == 0 or nb == 0 else float((a & b).sum() / np.sqrt(na * nb))


def binary_cosine_matrix(a, b=None, chunk: int = 1 << 20) -> np.ndarray:
    """Pairwise binary cosine: a [K1, N], b [K2, N] (default a) bool -> float64 [K1, K2].

    Counts are exact (float64 products of 0/1 in column chunks of `chunk`).
    """
    a = np.asarray(a, bool)
    b = a if b is None else np.asarray(b, bool)
    inter = np.zeros((a.shape[0], b.shape[0]), np.float64)
    for s in range(0, a.shape[1], chunk):
        inter += a[:, s:s + chunk].astype(np.float64) @ b[:, s:s + chunk].astype(np.float64).T
    na = a.sum(1).astype(np.float64)
    nb = b.sum(1).astype(np.float64)
    denom = np.sqrt(np.outer(na, nb))
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)


# ---- masks of K prompts ------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class NeuronMasks:
    """Activated-neuron masks of K prompts on one stimulus.

    masks: bool [K, N, B, S, F] (N = the backbone's layers, B stimulus
      examples, S selected positions, F FFN width).
    backbone: name of the backbone that produced them.
    names: optional prompt names (for messages and reports), length K.
    """

    masks: np.ndarray
    backbone: str
    positions: object = "last"
    threshold: float = 0.0
    names: tuple[str, ...] | None = None
    rule: str | None = None  # the FFN value binarized (`Backbone.ffn_activation_rules`)

    @property
    def num_layers(self) -> int:
        return int(self.masks.shape[1])

    def flat(self, layers: LayerSpec = None) -> np.ndarray:
        """bool [K, n] over the chosen layers (None: all)."""
        idx = layer_indices(layers, self.num_layers, f"backbone {self.backbone!r}")
        sub = self.masks[:, idx]
        return sub.reshape(sub.shape[0], -1)


def on_matrix(a: NeuronMasks, b: NeuronMasks | None = None, layers: LayerSpec = None) -> np.ndarray:
    """ON between every prompt of `a` and of `b` (default a): float64 [K1, K2]."""
    b = a if b is None else b
    if a.backbone != b.backbone:
        raise ConfigError(
            f"ON compares neurons of one model, but these prompts come from different backbones "
            f"({a.backbone!r} vs {b.backbone!r}); project one prompt onto the other backbone "
            "(`ptransfer project apply`) and capture both there.")
    if a.rule != b.rule:
        raise ConfigError(f"neuron masks captured with FFN rules {a.rule!r} and {b.rule!r} "
                          "cannot be compared; capture both with the same rule.")
    if a.masks.shape[1:] != b.masks.shape[1:] or a.positions != b.positions:
        raise ConfigError(
            f"neuron masks of shapes {a.masks.shape[1:]} (positions {a.positions!r}) and "
            f"{b.masks.shape[1:]} (positions {b.positions!r}) do not correspond; capture both "
            "with the same stimulus and positions.")
    return binary_cosine_matrix(a.flat(layers), b.flat(layers))


def on_by_window(a: NeuronMasks, b: NeuronMasks | None = None,
                 size: int = 3) -> dict[tuple[int, int], np.ndarray]:
    """ON restricted to each window of `size` consecutive layers: window -> [K1, K2]."""
    return {w: on_matrix(a, b, layers=w) for w in layer_windows(a.num_layers, size)}


# ---- capture from a backbone -------------------------------------------------

def _check_positions(positions):
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise ConfigError(f"unknown positions {positions!r}; use one of "
                              f"{', '.join(POSITION_MODES)} or a tuple of position indices.")
        return positions
    try:
        return tuple(int(p) for p in positions)
    except TypeError:
        raise ConfigError(f"positions must be one of {', '.join(POSITION_MODES)} or a tuple of "
                          f"indices, got {positions!r}.") from None


def select_positions(acts, positions, prompt_len: int, inputs_mask, backbone: str = "backbone"):
    """Pick positions of acts [N, B, S, F]; returns (acts [N, B, S', F], valid bool [B, S']).

    Shapes are static, so this runs inside jit. A backbone whose S equals
    prompt + input length lays the prompt first, then the (left-padded) inputs.
    """
    import jax.numpy as jnp

    s = acts.shape[2]
    batch, li = inputs_mask.shape
    covers_prompt = s == prompt_len + li
    if covers_prompt:
        valid = jnp.concatenate([jnp.ones((batch, prompt_len), bool), inputs_mask > 0], axis=1)
    else:
        valid = jnp.ones((batch, s), bool)
    if positions == "all":
        return acts, valid
    if positions == "last":
        return acts[:, :, -1:], valid[:, -1:]
    if positions == "prompt":
        if not covers_prompt or prompt_len == 0:
            raise ConfigError(
                f"positions='prompt' needs a backbone that exposes the prompt positions, but "
                f"{backbone} exposes {s} position(s) for a prompt of {prompt_len} and inputs of "
                f"{li} (T5 exposes only the first decoder step); use positions='last'.")
        return acts[:, :, :prompt_len], valid[:, :prompt_len]
    bad = [p for p in positions if not -s <= p < s]
    if bad:
        raise ConfigError(f"positions {bad} are outside the {s} positions {backbone} exposes.")
    idx = jnp.asarray(positions)
    return acts[:, :, idx], valid[:, idx]


class ActivationCapture:
    """One jitted capture function for one backbone, reused for every prompt.

    `capture(params, prompts, inputs, inputs_mask)` returns NeuronMasks of the
    K prompts; prompts are fed one at a time through the same compiled function.
    `rule` picks the FFN value (None: the backbone's default, `ffn_activation_rules`).
    """

    def __init__(self, backbone, *, positions="last", threshold: float = 0.0,
                 rule: str | None = None):
        import jax

        self.backbone = backbone
        self.positions = _check_positions(positions)
        self.threshold = float(threshold)
        self.rule = backbone.ffn_rule(rule)
        self._fn = jax.jit(self._masks)

    def _masks(self, params, prompt, inputs, inputs_mask, threshold):
        acts = self.backbone.ffn_activations(params, prompt, inputs, inputs_mask, rule=self.rule)
        acts, valid = select_positions(acts, self.positions, prompt.shape[0], inputs_mask,
                                       f"backbone {self.backbone.name!r}")
        return binarize(acts, threshold) & valid[None, :, :, None]

    @property
    def compilations(self) -> int:
        """How many variants of the capture function have been compiled."""
        return int(self._fn._cache_size())

    def __call__(self, params, prompts, inputs, inputs_mask, *, names=None,
                 prompt_backbones=None) -> NeuronMasks:
        """Masks for prompts [K, L, D] (or a list of [L, D]) on one stimulus.

        Args:
          inputs, inputs_mask: int32 [B, Li] stimulus, left-padded.
          names: optional K prompt names, used in messages.
          prompt_backbones: optional K backbone names the prompts were trained
            on (bank meta); any other than this backbone is refused.
        """
        import jax.numpy as jnp

        prompts = list(prompts)
        k = len(prompts)
        names = tuple(names) if names is not None else tuple(f"prompt {i}" for i in range(k))
        if len(names) != k:
            raise ConfigError(f"{len(names)} names given for {k} prompts.")
        own = self.backbone.name
        if prompt_backbones is not None:
            foreign = [f"{n} ({bb})" for n, bb in zip(names, prompt_backbones) if bb != own]
            if foreign:
                raise ConfigError(
                    f"ON compares neurons of one model, but {', '.join(foreign)} come from other "
                    f"backbones than {own!r}; project them first (`ptransfer project apply`).")
        widths = {n: int(np.shape(p)[-1]) for n, p in zip(names, prompts)}
        if len(set(widths.values())) > 1 or any(w != self.backbone.d_model for w in widths.values()):
            wrong = [f"{n} (width {w})" for n, w in widths.items() if w != self.backbone.d_model]
            raise ConfigError(
                f"prompts of mixed widths: {', '.join(wrong)} do not fit backbone {own!r} "
                f"(d_model {self.backbone.d_model}); prompts from another backbone must first be "
                "projected (`ptransfer project apply`).")
        for p in prompts:
            self.backbone.check_prompt(p)
        inputs = jnp.asarray(inputs, jnp.int32)
        inputs_mask = jnp.asarray(inputs_mask, jnp.int32)
        threshold = jnp.float32(self.threshold)
        out = [np.asarray(self._fn(params, jnp.asarray(p, jnp.float32), inputs, inputs_mask,
                                   threshold)) for p in prompts]
        if len({m.shape for m in out}) > 1:
            raise ConfigError(f"positions={self.positions!r} give masks of different shapes for "
                              "prompts of different lengths; use positions='last'.")
        return NeuronMasks(np.stack(out), own, self.positions, self.threshold, names, self.rule)


def capture_activation_masks(backbone, params, prompts, inputs, inputs_mask, *,
                             positions="last", threshold: float = 0.0, names=None,
                             prompt_backbones=None, capture: ActivationCapture | None = None,
                             rule: str | None = None) -> NeuronMasks:
    """Binary FFN activation masks of K prompts [K, L, D] on one stimulus.

    Compiles one function (or reuses `capture`'s) and loops over the prompts.
    Returns NeuronMasks with masks bool [K, num_layers, B, S', F].
    """
    if capture is None:
        capture = ActivationCapture(backbone, positions=positions, threshold=threshold, rule=rule)
    elif capture.backbone is not backbone:
        raise ConfigError("the given ActivationCapture belongs to another backbone.")
    return capture(params, prompts, inputs, inputs_mask, names=names,
                   prompt_backbones=prompt_backbones)
