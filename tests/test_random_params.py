"""Decoder-only presets drawn on the host: the flax initializers' shapes and variances."""

import jax
import numpy as np
import pytest

from ptransfer.backbones import decoder_only
from ptransfer.core.errors import ConfigError


def _families():
    from ptransfer.backbones import llama
    from ptransfer.backbones.gemma3 import config as gemma_config
    from ptransfer.backbones.gemma3 import model as gemma_model

    return {"llama_tiny": (llama.abstract_params, llama.PRESETS["llama_tiny"]),
            "gemma3_tiny": (gemma_model.abstract_params, gemma_config.PRESETS["gemma3_tiny"])}


@pytest.mark.parametrize("preset", ["llama_tiny", "gemma3_tiny"])
def test_random_params_have_the_modules_shapes_and_initializer_variances(preset):
    abstract, config = _families()[preset]
    shapes = abstract(config)[0]
    params = decoder_only.random_params(shapes, seed=0)
    want = jax.tree_util.tree_map(lambda s: (tuple(s.shape), np.dtype(s.dtype)), shapes)
    got = jax.tree_util.tree_map(lambda a: (tuple(a.shape), np.dtype(a.dtype)), params)
    assert got == want
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    kinds = set()
    for path, leaf in flat:
        name, leaf = path[-1].key, np.asarray(leaf)
        kinds.add(name)
        if name == "scale":
            np.testing.assert_array_equal(leaf, 1.0)
            continue
        var = 1.0 if name == "embedding" else 1.0 / leaf.shape[0]
        # the sample variance of n normal draws has relative SE sqrt(2 / n)
        tol = 5 * np.sqrt(2.0 / leaf.size)
        assert abs(leaf.var() / var - 1.0) < tol, (path, leaf.var(), var)
        assert abs(leaf.mean()) < 5 * np.sqrt(var / leaf.size), path
    assert {"scale", "embedding", "kernel"} <= kinds
    again = decoder_only.random_params(shapes, seed=0)
    other = decoder_only.random_params(shapes, seed=1)
    for a, b, c in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(again),
                       jax.tree_util.tree_leaves(other)):
        np.testing.assert_array_equal(a, b)
        if np.asarray(a).std() > 0:
            assert not np.array_equal(a, c)


def test_a_preset_loads_with_the_drawn_params():
    from ptransfer import load_backbone

    abstract, config = _families()["llama_tiny"]
    bb = load_backbone("preset:llama_tiny", seed=4)
    want = decoder_only.random_params(abstract(config)[0], seed=4)
    for a, b in zip(jax.tree_util.tree_leaves(bb.params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_array_equal(a, b)


def test_a_parameter_without_an_initializer_is_refused():
    shapes = {"layer": {"bias": jax.ShapeDtypeStruct((4,), np.float32)}}
    with pytest.raises(ConfigError, match="'bias'"):
        decoder_only.random_params(shapes, seed=0)
