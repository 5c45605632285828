"""Cross-model mappers on tiny backbones with two vocabularies, each checked where it
must be exact: mlm_tiny (width 32, a byte-level BPE vocabulary) -> llama_tiny
(width 64, seqio's byte vocabulary); they share 128 token texts."""

import dataclasses
import json
import os

import numpy as np
import pytest
import scipy.optimize

from ptransfer import load_backbone
from ptransfer.core.errors import CheckpointError, ConfigError
from ptransfer.projector import mappers
from ptransfer.projector.model import Projector

L = 3


def _with_table(bb, table, name=None):
    """The backbone with another input-embedding table (and optionally another id)."""
    params = dict(bb.params)
    params["token_embedder"] = {**params["token_embedder"],
                                "embedding": np.asarray(table, np.float32)}
    out = dataclasses.replace(bb, params=params, name=name or bb.name)
    np.testing.assert_array_equal(np.asarray(out.embedding_table(out.params)), table)
    return out


@pytest.fixture(scope="module")
def pair():
    return load_backbone("preset:mlm_tiny"), load_backbone("preset:llama_tiny")


@pytest.fixture(scope="module")
def linked(pair):
    """(source, target, M): the target's shared-token rows are the source's @ M [32, 64]."""
    src, tgt = pair
    shared = mappers.SharedTokens.of(src, tgt)
    m = np.random.default_rng(0).normal(size=(src.d_model, tgt.d_model)).astype(np.float32)
    table = np.array(shared.tgt_table)
    table[shared.tgt_ids] = shared.src_table[shared.src_ids] @ m
    return src, _with_table(tgt, table), m


def test_the_pair_shares_the_ascii_tokens(pair):
    shared = mappers.SharedTokens.of(*pair)
    assert shared.count == 128
    assert mappers.MapperPair.of(*pair, L).source_vocab != mappers.MapperPair.of(*pair, L).target_vocab


def test_v2v_lin_recovers_a_known_linear_map(linked):
    src, tgt, m = linked
    mapper = mappers.V2VLin.fit(src, tgt, L)
    np.testing.assert_allclose(mapper.arrays["w"], m, atol=2e-3)
    assert mapper.summary["shared_tokens"] == 128 and mapper.summary["relative_residual"] < 1e-5
    prompts = np.random.default_rng(1).normal(size=(4, L, src.d_model)).astype(np.float32)
    out = mapper.apply(prompts, source=src, target=tgt)
    assert out.shape == (4, L, tgt.d_model) and out.dtype == np.float32
    np.testing.assert_allclose(out, prompts @ m, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(mapper.apply(prompts[2]), out[2], atol=1e-6)  # batched == one


def test_lin_comb_reproduces_a_prompt_of_shared_token_embeddings(pair):
    src, tgt = pair
    shared = mappers.SharedTokens.of(src, tgt)
    mapper = mappers.LinComb.fit(src, tgt, L)
    k = mapper.config["num_tokens"]
    assert k == src.d_model  # the default dictionary: as many tokens as the source width
    d_src, d_tgt = shared.first(k, "test")
    coef = np.random.default_rng(2).normal(size=(2, L, k)).astype(np.float32)
    np.testing.assert_allclose(mapper.coefficients(coef[0] @ d_src), coef[0], atol=2e-3)
    np.testing.assert_allclose(mapper.apply(coef @ d_src), coef @ d_tgt, rtol=1e-3, atol=2e-3)

    # Every shared token, minimum norm: the same map as v2v-lin.
    full = mappers.LinComb.fit(src, tgt, L, num_tokens=shared.count)
    lin = mappers.V2VLin.fit(src, tgt, L)
    prompt = np.random.default_rng(3).normal(size=(L, src.d_model)).astype(np.float32)
    np.testing.assert_allclose(full.apply(prompt), lin.apply(prompt), rtol=1e-3, atol=1e-3)


def test_non_negative_lin_comb_matches_scipy_nnls(pair):
    src, tgt = pair
    mapper = mappers.LinComb.fit(src, tgt, L, num_tokens=12, non_negative=True, iterations=3000)
    d_src, d_tgt = mapper.arrays["src_dict"], mapper.arrays["tgt_dict"]
    rng = np.random.default_rng(4)
    # A non-negative combination is reproduced; a generic vector gets NNLS's answer.
    exact = np.maximum(rng.normal(size=12), 0).astype(np.float32)
    generic = rng.normal(size=(L - 1, src.d_model)).astype(np.float32)
    prompt = np.concatenate([(exact @ d_src)[None], generic])
    coef = mapper.coefficients(prompt)
    np.testing.assert_allclose(coef[0], exact, atol=1e-3)
    for row, vec in zip(coef[1:], generic):
        want, _ = scipy.optimize.nnls(d_src.T.astype(np.float64), vec.astype(np.float64))
        np.testing.assert_allclose(row, want, atol=1e-3)
    assert (coef >= 0).all()
    np.testing.assert_allclose(mapper.apply(prompt), coef @ d_tgt, rtol=1e-4, atol=1e-4)


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q.astype(np.float32)


def test_relative_description_is_invariant_to_a_rotation():
    rng = np.random.default_rng(5)
    vectors, anchors = rng.normal(size=(4, 16)), rng.normal(size=(40, 16))
    q = _rotation(16, 6)
    a = np.asarray(mappers.relative_description(vectors, anchors))
    b = np.asarray(mappers.relative_description(vectors @ q, anchors @ q))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a).max() <= 1.0 + 1e-6
    # Not invariant to a non-orthogonal map: the test can tell the two apart.
    c = np.asarray(mappers.relative_description(vectors @ (q * np.arange(1, 17)),
                                                anchors @ (q * np.arange(1, 17))))
    assert np.abs(a - c).max() > 0.05


def test_relative_search_finds_the_rotated_prompt():
    t5 = load_backbone("preset:t5_tiny")
    q = _rotation(t5.d_model, 7)
    table = np.asarray(t5.embedding_table(t5.params))
    rotated = _with_table(t5, table @ q, name="t5_tiny_rotated")
    prompt = np.random.default_rng(8).normal(size=(2, L, t5.d_model)).astype(np.float32)
    mapper = mappers.Relative.fit(t5, rotated, L, num_anchors=100, steps=400,
                                  learning_rate=0.05, random_init=True)
    out, loss = mapper.search(prompt)
    assert float(np.max(loss)) < 1e-6
    want = prompt @ q
    cos = np.sum(np.asarray(out) * want, -1) / (np.linalg.norm(out, axis=-1)
                                                * np.linalg.norm(want, axis=-1))
    assert cos.min() > 0.999
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), np.linalg.norm(want, axis=-1),
                               rtol=1e-4)  # a rotation keeps the embedding norms
    # Same description on the target side as the prompt's on the source side.
    anchors = mapper.arrays["tgt_anchors"]
    np.testing.assert_allclose(anchors, mapper.arrays["src_anchors"] @ q, atol=1e-5)
    np.testing.assert_allclose(mappers.relative_description(np.asarray(out), anchors),
                               mapper.describe(prompt), atol=2e-3)


def _fitted(pair):
    src, tgt = pair
    projector = Projector.for_backbones(src, tgt, L, hidden=16, seed=1)
    return [mappers.V2VLin.fit(src, tgt, L), mappers.LinComb.fit(src, tgt, L),
            mappers.LinComb.fit(src, tgt, L, num_tokens=8, non_negative=True, iterations=50),
            mappers.Relative.fit(src, tgt, L, num_anchors=64, steps=20),
            mappers.ProjectorMapper.from_projector(projector, src, tgt)]


def test_every_mapper_round_trips_through_its_files(pair, tmp_path):
    src, tgt = pair
    prompt = np.random.default_rng(10).normal(size=(L, src.d_model)).astype(np.float32)
    for i, mapper in enumerate(_fitted(pair)):
        directory = mapper.save(str(tmp_path / f"m{i}"))
        files = sorted(os.listdir(directory))
        assert files == sorted([mappers.SPEC_FILE] + [f"{n}.npy" for n in mapper.arrays])
        with open(os.path.join(directory, mappers.SPEC_FILE)) as f:
            meta = json.load(f)
        assert meta["kind"] == mapper.kind and meta["pair"]["source_backbone"] == "mlm_tiny"
        assert meta["pair"]["target_vocab"] == "byte" and meta["pair"]["prompt_length"] == L
        loaded = mappers.load(directory)
        assert type(loaded) is type(mapper) and loaded.pair == mapper.pair
        out = loaded.apply(prompt, source=src, target=tgt)
        assert out.shape == (L, tgt.d_model) and np.isfinite(out).all()
        np.testing.assert_array_equal(out, mapper.apply(prompt))
    projector = loaded.projector
    np.testing.assert_allclose(projector.project(prompt), out, atol=1e-6)


def test_mappers_refuse_other_prompts_and_pairs(pair, tmp_path):
    src, tgt = pair
    mapper = mappers.V2VLin.fit(src, tgt, L)
    with pytest.raises(ConfigError, match=r"width 64, but this mapper was fit for 'mlm_tiny'.*"
                                          r"width 32.*'llama_tiny'"):
        mapper.apply(np.zeros((L, 64)))
    with pytest.raises(ConfigError, match=r"length 5, but this mapper was fit for .*prompt "
                                          r"length 3"):
        mapper.apply(np.zeros((5, 32)))
    with pytest.raises(ConfigError, match="shape"):
        mapper.apply(np.zeros(32))
    t5 = load_backbone("preset:t5_tiny")
    with pytest.raises(ConfigError, match="its target backbone 't5_tiny'"):
        mapper.apply(np.zeros((L, 32)), target=t5)
    # Same id, another vocabulary: still refused.
    impostor = dataclasses.replace(t5, name="llama_tiny")
    impostor.vocab = src.vocab
    with pytest.raises(ConfigError, match=r"its target backbone 'llama_tiny' \(vocabulary tok"):
        mapper.apply(np.zeros((L, 32)), target=impostor)
    with pytest.raises(ConfigError, match="its source backbone"):
        mapper.apply(np.zeros((L, 32)), source=tgt)

    directory = mapper.save(str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="not empty"):
        mapper.save(directory)
    np.save(os.path.join(directory, "w.npy"), np.zeros((3, 3), np.float32))
    with pytest.raises(CheckpointError, match=r"w.npy .* has shape \[3, 3\]"):
        mappers.load(directory)
    with pytest.raises(CheckpointError, match="not a mapper directory"):
        mappers.load(str(tmp_path))
    with pytest.raises(ConfigError, match="between 32 and 128 shared tokens"):
        mappers.V2VLin.fit(src, tgt, L, max_tokens=10)
