"""Prompt tuning, ON and bad input on the masked-LM family (issue 11 acceptance 2-4).

The main path is exercised: a tiny RoBERTa-shaped checkpoint written here as
an HF directory (config.json, model.safetensors, tokenizer.json with
RoBERTa's id layout and byte-level BPE, label words single "Ġword" tokens),
loaded by `load_backbone("hf:...")`, with the task's MLM template from the one
task registry and the real Trainer.
"""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

import jax  # noqa: E402

import tasks  # noqa: E402
from ptransfer import data as features  # noqa: E402
from ptransfer.backbones import load_backbone, mlm  # noqa: E402
from ptransfer.backbones.mlm_vocab import label_word_bpe  # noqa: E402
from ptransfer.core.errors import ConfigError  # noqa: E402
from ptransfer.core.vocab import check_single_token_label_words  # noqa: E402
from tasks.specs import registered_mlm_label_words  # noqa: E402

D, HEADS, FF, LAYERS, MAX_POS = 32, 4, 64, 2, 66

# A small tweeteval-format split (the task's release files) with a learnable cue.
# Labels 0 / 2 ("negative" / "positive" of the three label words).
TEXTS = ["what a joy this was", "joy joy and more joy", "a film of pure joy",
         "pure joy from start to end", "what a pain this was", "pain pain and more pain",
         "a film of pure pain", "pure pain from start to end"]
LABELS = [2, 2, 2, 2, 0, 0, 0, 0]


@pytest.fixture(scope="module")
def tweet_dir(tmp_path_factory):
    """data_dir with tweeteval/sentiment/{train,val,test}_{text,labels}.txt; val = train."""
    root = tmp_path_factory.mktemp("mlm_data")
    d = root / "tweeteval" / "sentiment"
    d.mkdir(parents=True)
    for split, n in (("train", 8), ("val", 8), ("test", 2)):
        (d / f"{split}_text.txt").write_text("".join(t + "\n" for t in TEXTS[:n]))
        (d / f"{split}_labels.txt").write_text("".join(f"{y}\n" for y in LABELS[:n]))
    return str(root)


def write_roberta_dir(path, *, seed=0, tokenizer=True):
    """A random tiny RobertaForMaskedLM in HF layout (weights [out, in], lm_head tied).

    Weights are drawn at unit-variance-preserving scales (kernels 1/sqrt(fan_in),
    embeddings ~1), not BERT's 0.02 init, under which a random model's attention
    is uniform and its MLM distribution flat, so no prompt could steer it.
    """
    from safetensors.numpy import save_file

    tok = label_word_bpe(registered_mlm_label_words(), before_bytes=("<s>", "<pad>", "</s>", "<unk>"),
                         after_bytes=(), last=("<mask>",))
    vocab = tok.get_vocab_size(with_added_tokens=True)
    rng = np.random.default_rng(seed)
    normal = lambda std, *shape: (std * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    t = {}

    def linear(name, n_out, n_in):
        t[f"{name}.weight"] = normal(n_in ** -0.5, n_out, n_in)
        t[f"{name}.bias"] = normal(0.02, n_out)

    def norm(name):
        t[f"{name}.weight"] = 1 + normal(0.02, D)
        t[f"{name}.bias"] = normal(0.02, D)

    e = "roberta.embeddings"
    t[f"{e}.word_embeddings.weight"] = normal(1.0, vocab, D)
    t[f"{e}.position_embeddings.weight"] = normal(0.5, MAX_POS, D)
    t[f"{e}.token_type_embeddings.weight"] = normal(0.1, 1, D)
    norm(f"{e}.LayerNorm")
    for i in range(LAYERS):
        p = f"roberta.encoder.layer.{i}"
        for n in ("query", "key", "value"):
            linear(f"{p}.attention.self.{n}", D, D)
        linear(f"{p}.attention.output.dense", D, D)
        norm(f"{p}.attention.output.LayerNorm")
        linear(f"{p}.intermediate.dense", FF, D)
        linear(f"{p}.output.dense", D, FF)
        norm(f"{p}.output.LayerNorm")
    linear("lm_head.dense", D, D)
    norm("lm_head.layer_norm")
    t["lm_head.bias"] = normal(0.02, vocab)
    os.makedirs(path, exist_ok=True)
    save_file(t, os.path.join(path, "model.safetensors"))
    config = {"architectures": ["RobertaForMaskedLM"], "model_type": "roberta",
              "hidden_size": D, "num_attention_heads": HEADS, "intermediate_size": FF,
              "num_hidden_layers": LAYERS, "vocab_size": vocab, "max_position_embeddings": MAX_POS,
              "type_vocab_size": 1, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
              "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "tie_word_embeddings": True}
    if not tokenizer:  # the <mask> id then comes from config.json
        config["mask_token_id"] = vocab - 1
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    if tokenizer:
        tok.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"unk_token": "<unk>", "mask_token": "<mask>"}, f)
    return str(path)


@pytest.fixture(scope="module")
def tiny():
    """The mlm_tiny preset (its vocabulary: mlm_vocab.tiny_vocab)."""
    return mlm.from_preset("mlm_tiny", seed=5)


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    return load_backbone("hf:" + write_roberta_dir(tmp_path_factory.mktemp("roberta") / "tiny"))


def _host(tree):
    return [np.array(x) for x in jax.tree_util.tree_leaves(tree)]


# ---- the task registry serves the masked-LM form -----------------------------------------


def test_roberta_tokenizer_json_path_gives_single_token_label_words(roberta):
    c = roberta.config
    assert type(roberta.vocab).__name__ == "TokenizersVocabulary"
    assert (c.bos_id, c.pad_id, c.eos_id, roberta.vocab.unk_id) == (0, 1, 2, 3)
    assert c.mask_id == roberta.vocab.vocab_size - 1  # <mask> last, as in roberta-base
    tok = roberta.vocab.tokenizer
    ids = check_single_token_label_words(roberta.vocab, [" negative", " positive"], "mr")
    assert [tok.id_to_token(i) for i in ids] == ["\u0120negative", "\u0120positive"]


def test_tweeteval_mlm_batches_and_candidates(roberta, tweet_dir):
    task = tasks.get_task("tweeteval", roberta.vocab, add_eos=False, data_dir=tweet_dir,
                          mlm=roberta.config)
    c, vocab = roberta.config, roberta.vocab
    batch = next(features.iterate_batches(task, "train", 8, {"inputs": 48, "targets": 1},
                                          shuffle=False, repeat=False))
    cands, cmask = features.label_candidates("tweeteval", vocab, False, 1, mlm=True)
    assert cmask.tolist() == [[1], [1], [1]]
    for i in range(8):
        real = batch["inputs"][i][batch["inputs_mask"][i] == 1].tolist()
        want = ([c.bos_id] + vocab.encode(TEXTS[i] + " It was") + [c.mask_id] + vocab.encode(".")
                + [c.eos_id])
        assert real == want
        assert batch["targets"][i].tolist() == cands[LABELS[i]].tolist()


@pytest.mark.parametrize("name", ["mr", "sms_spam", "trec"])
def test_corpus_tasks_mlm_form_with_tiny_preset(name, assets_dir, tiny):
    """The tiny preset (label-word BPE on byte ids) serves the corpora end to end."""
    bb = tiny
    c = bb.config
    task = tasks.get_task(name, bb.vocab, add_eos=False, cache_dir=assets_dir, mlm=c)
    spec = tasks.get_spec(name)
    batch = next(features.iterate_batches(task, "validation", 4, {"inputs": 48, "targets": 1},
                                          shuffle=False, repeat=False))
    cands, cmask = features.label_candidates(spec, bb.vocab, False, 1, mlm=True)
    refs = features.references(task, "validation")[:4]
    before, after = spec.mlm_template.split(tasks.MASK_SLOT)
    for i in range(4):
        real = batch["inputs"][i][batch["inputs_mask"][i] == 1].tolist()
        assert real[0] == c.bos_id and real[-1] == c.eos_id and real.count(c.mask_id) == 1
        m = real.index(c.mask_id)
        if not before:  # trec: "<mask> : {text}"
            assert m == 1
        else:           # mr, sms_spam: "{text} ... <mask>."
            assert m > 1 and real[m + 1:-1] == bb.vocab.encode(after)
        assert batch["targets"][i].tolist() == cands[refs[i]].tolist()
    scores = np.asarray(bb.score_candidates(bb.params, None, batch["inputs"], batch["inputs_mask"],
                                            cands, cmask))
    assert scores.shape == (4, len(spec.mlm_label_words)) and np.isfinite(scores).all()


# ---- acceptance 2: prompt tuning to 100% train accuracy, only the prompt changes -----------


def test_prompt_tuning_reaches_full_train_accuracy_with_frozen_params(roberta, tweet_dir,
                                                                      tmp_path):
    from ptransfer import prompts, scoring
    from ptransfer.data import load_task
    from ptransfer.training.optimizer import OptimizerConfig
    from ptransfer.training.trainer import TrainConfig, Trainer

    frozen = _host(roberta.params)
    cfg = TrainConfig(backbone="hf:tiny", task="tweeteval", model_dir=str(tmp_path / "run"),
                      prompt_length=16, init_from="random", batch_size=8, train_steps=200,
                      optimizer=OptimizerConfig(name="adamw", learning_rate=0.3),
                      input_length=48, target_length=1, data_dir=tweet_dir, eval_every=50,
                      eval_examples=None, checkpoint_every=0, progress=False, log_every=0)
    result = Trainer(cfg, backbone=roberta).run()

    # 100% accuracy on the 8 training examples, scored on the train split itself
    task, is_mlm = load_task("tweeteval", roberta, tweet_dir)
    assert is_mlm
    train_set = scoring.build_eval_set(task, tasks.get_spec("tweeteval"), roberta, "train", None,
                                       {"inputs": 48, "targets": 1}, mlm=True)
    scorer = scoring.Scorer(roberta, batch_size=8)
    assert scorer.evaluate(None, train_set)["accuracy"] < 100.0  # the task is not free
    assert scorer.evaluate(result.final_prompt, train_set)["accuracy"] == 100.0  # percent
    assert result.best_score == 100.0 and result.metric == "accuracy"
    # only the prompt changed; the frozen params are bitwise identical
    init = prompts.init_prompt("random", roberta, 16, seed=0)
    assert result.final_prompt.shape == (16, D) and not np.allclose(result.final_prompt, init)
    after = _host(roberta.params)
    assert all(a.dtype == b.dtype and a.tobytes() == b.tobytes() for a, b in zip(frozen, after))
    assert os.path.isfile(os.path.join(result.bank_entry, "prompt.npy"))


# ---- acceptance 3: ON equals a manual computation -------------------------------------------


def _np_ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _manual_ffn_preacts(params, config, ids, prompt):
    """float64 numpy forward of one unpadded example, prompt after the start token;
    returns each layer's FFN pre-activation (x @ wi + b) at the mask: [layers, F]."""
    from scipy.special import erf

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    emb = p["token_embedder"]["embedding"]
    x = np.concatenate([emb[ids[:1]], np.asarray(prompt, np.float64), emb[ids[1:]]])
    n = len(x)
    x = x + p["token_type_embedder"]["embedding"][0]
    x = x + p["position_embedder"]["embedding"][config.position_offset + np.arange(n)]
    x = _np_ln(x, p["embedding_norm"], config.layer_norm_epsilon)
    mask_at = len(prompt) + list(ids).index(config.mask_id)
    hd = config.d_model // config.num_heads
    out = []
    for i in range(config.num_layers):
        lp = p[f"layers_{i}"]
        a = lp["attention"]
        proj = lambda name: (x @ a[name]["kernel"] + a[name]["bias"]).reshape(n, config.num_heads, hd)  # noqa: E731
        q, k, v = proj("query"), proj("key"), proj("value")
        logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", w, v).reshape(n, -1) @ a["out"]["kernel"] + a["out"]["bias"]
        x = _np_ln(x + att, lp["post_attention_layer_norm"], config.layer_norm_epsilon)
        pre = x @ lp["mlp"]["wi"]["kernel"] + lp["mlp"]["wi"]["bias"]
        out.append(pre[mask_at])
        h = 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
        x = _np_ln(x + h @ lp["mlp"]["wo"]["kernel"] + lp["mlp"]["wo"]["bias"],
                   lp["post_mlp_layer_norm"], config.layer_norm_epsilon)
    return np.stack(out)


def test_on_equals_manual_binarized_activations_cosine(tiny):
    from ptransfer.indicators.neurons import capture_activation_masks, on_matrix

    bb = tiny
    c = bb.config
    # At BERT's init scale (0.02) attention barely mixes tokens, so every prompt would
    # activate the same neurons; sharper attention makes ON discriminate.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 8.0 if "attention" in jax.tree_util.keystr(path)
        and "kernel" in jax.tree_util.keystr(path) else x, bb.params)
    rng = np.random.default_rng(1)
    prompts = (0.5 * rng.standard_normal((3, 5, c.d_model))).astype(np.float32)
    rows = [[c.bos_id, c.mask_id, c.eos_id],  # the dummy stimulus
            [c.bos_id] + bb.vocab.encode("a fine day") + [c.mask_id] + bb.vocab.encode(".") + [c.eos_id]]
    li = max(map(len, rows)) + 2
    inputs = np.array([[7] * (li - len(r)) + r for r in rows], np.int32)  # junk under the padding
    mask = np.array([[0] * (li - len(r)) + [1] * len(r) for r in rows], np.int32)

    masks = capture_activation_masks(bb, params, prompts, inputs, mask, positions="last")
    assert masks.masks.shape == (3, c.num_layers, 2, 1, c.d_ff)

    pre = np.stack([np.stack([_manual_ffn_preacts(params, c, r, pr) for r in rows], axis=1)
                    for pr in prompts])                                   # [K, N, B, F]
    assert np.abs(pre).min() > 1e-5  # no neuron sits on the float32 rounding boundary
    manual = pre > 0                                                      # GELU(x) > 0 iff x > 0
    np.testing.assert_array_equal(masks.masks[:, :, :, 0], manual)
    on = on_matrix(masks)
    flat = manual.reshape(3, -1)
    for i in range(3):
        for j in range(3):
            a, b = flat[i], flat[j]
            want = (a & b).sum() / math.sqrt(a.sum() * b.sum())
            assert on[i, j] == pytest.approx(want, abs=1e-12)
    assert on[0, 1] < 1.0  # distinct prompts do not activate identical neurons
    # per-layer window agrees with the manual per-layer cosine
    one = on_matrix(masks, layers=[1])
    a, b = manual[0, 1].ravel(), manual[2, 1].ravel()
    assert one[0, 2] == pytest.approx((a & b).sum() / math.sqrt(a.sum() * b.sum()), abs=1e-12)


# ---- acceptance 4: bad input ----------------------------------------------------------------


def test_template_without_mask_slot_is_refused(roberta, tweet_dir):
    spec = dataclasses.replace(tasks.get_spec("tweeteval"), name="toy_nomask",
                               mlm_template="{text} It was good.")
    with pytest.raises(ConfigError, match=r"task 'toy_nomask': its masked-LM template "
                                          r"'\{text\} It was good\.' has 0 mask slots"):
        tasks.get_task(spec, roberta.vocab, add_eos=False, data_dir=tweet_dir, mlm=roberta.config)
    two = dataclasses.replace(spec, name="toy_two", mlm_template="<mask> {text} <mask>")
    with pytest.raises(ConfigError, match="has 2 mask slots"):
        tasks.get_task(two, roberta.vocab, add_eos=False, data_dir=tweet_dir, mlm=roberta.config)


def test_multi_token_label_word_names_the_word_and_the_task(roberta, tweet_dir):
    spec = dataclasses.replace(tasks.get_spec("tweeteval"), name="toy_words",
                               mlm_label_words=(" negative", " so-so", " positive"))
    msg = r"task 'toy_words': label word ' so-so' is \d tokens"
    with pytest.raises(ConfigError, match=msg):
        tasks.get_task(spec, roberta.vocab, add_eos=False, data_dir=tweet_dir, mlm=roberta.config)
    with pytest.raises(ConfigError, match=msg):
        features.label_candidates(spec, roberta.vocab, False, 4, mlm=True)


def test_checkpoint_without_tokenizer_cannot_serve_word_verbalizers(tmp_path, tweet_dir):
    """Without tokenizer.json the byte vocabulary spells ' negative' in 9 tokens: the
    Trainer stops before training with the word and the task in the message."""
    from ptransfer.training.trainer import TrainConfig, Trainer

    bb = mlm.from_hf(write_roberta_dir(tmp_path / "no_tok", tokenizer=False))
    cfg = TrainConfig(backbone="hf:x", task="tweeteval", model_dir=str(tmp_path / "run"),
                      prompt_length=2, init_from="random", batch_size=2, train_steps=1,
                      input_length=16, target_length=1, data_dir=tweet_dir, progress=False)
    with pytest.raises(ConfigError, match=r"task 'tweeteval': label word ' negative' is 9 tokens"):
        Trainer(cfg, backbone=bb).run()
    assert not os.path.exists(tmp_path / "run" / "bank")


# ---- gin: the paper's RoBERTa-Large setting -------------------------------------------------

GIN_DIR = os.path.join(os.path.dirname(__file__), "..", "gin_configs", "experiments",
                       "roberta_large")


def test_roberta_large_gin_files_cover_the_mlm_paper_tasks_and_parse():
    from ptransfer.cli import gin_setup
    from ptransfer.cli.train import TRAIN_REQUIRED

    servable = {n for n in tasks.PAPER_TASKS if tasks.get_spec(n).mlm_template}
    assert servable == {n for n in tasks.PAPER_TASKS if tasks.get_spec(n).is_classification}
    per_task = {f[:-4] for f in os.listdir(GIN_DIR) if f.endswith(".gin")}
    assert per_task - {"roberta_large_prompt_tune"} == servable  # QA / summarization: none
    for task in sorted(servable):
        gin_setup.parse_gin([f"experiments/roberta_large/{task}.gin"],
                            ["BACKBONE='hf:/ckpt/roberta-large'", "MODEL_DIR='/tmp/rl'"],
                            required=TRAIN_REQUIRED)
        got = {k: gin_setup.macro_value(k) for k in ("TASK", "PROMPT_LENGTH", "BATCH_SIZE",
                                                     "OPTIMIZER", "INPUT_LENGTH", "TARGET_LENGTH")}
        assert got == {"TASK": task, "PROMPT_LENGTH": 100, "BATCH_SIZE": 16,
                       "OPTIMIZER": "adamw_roberta", "INPUT_LENGTH": 128, "TARGET_LENGTH": 1}
    # the backbone is the real checkpoint: leaving it out is a clear error
    with pytest.raises(ConfigError, match="required gin macro.*BACKBONE"):
        gin_setup.parse_gin(["experiments/roberta_large/sst2.gin"], ["MODEL_DIR='/tmp/rl'"],
                            required=TRAIN_REQUIRED)


def test_roberta_large_print_config(capsys):
    from ptransfer.cli.main import main
    from ptransfer.training.optimizer import PRESETS

    rc = main(["train", "--gin_file=experiments/roberta_large/mnli.gin",
               "--gin.BACKBONE=hf:/ckpt/roberta-large", "--gin.MODEL_DIR=/tmp/rl",
               "--print_config"])
    out = capsys.readouterr().out
    assert rc == 0
    for line in ("TASK = 'mnli'", "PROMPT_LENGTH = 100", "BATCH_SIZE = 16",
                 "OPTIMIZER = 'adamw_roberta'", "INPUT_LENGTH = 128",
                 "BACKBONE = 'hf:/ckpt/roberta-large'"):
        assert line in out, line
    assert PRESETS["adamw_roberta"].name == "adamw" and PRESETS["adamw_roberta"].learning_rate == 1e-4


# ---- the projector across families (widths differ) ------------------------------------------


def _ln_map(x, w, gamma, beta):
    """LayerNorm(x @ w) * gamma + beta over the last axis: a map the projector can represent."""
    y = x @ w
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-5)
    return (y * gamma + beta).astype(np.float32)


@pytest.fixture(scope="module")
def llama():
    return load_backbone("preset:llama_tiny")


@pytest.mark.parametrize("direction", ["mlm->llama", "llama->mlm"])
def test_projector_between_mlm_and_decoder_only_widths(direction, llama, tiny):
    from ptransfer.projector import model as pj
    from ptransfer.projector import training as pj_training

    mlm_bb = tiny
    src_bb, tgt_bb = (mlm_bb, llama) if direction == "mlm->llama" else (llama, mlm_bb)
    d_src, d_tgt = src_bb.d_model, tgt_bb.d_model
    assert {d_src, d_tgt} == {32, 64}
    rng = np.random.default_rng(0)
    length, n_train, n_test = 2, 1024, 64
    src = rng.standard_normal((n_train + n_test, length, d_src)).astype(np.float32)
    tgt = _ln_map(src, rng.standard_normal((d_src, d_tgt)) / np.sqrt(d_src),
                  1 + 0.1 * rng.standard_normal(d_tgt), 0.1 * rng.standard_normal(d_tgt))
    untrained = pj.Projector.for_backbones(src_bb, tgt_bb, length, hidden=64)
    settings = pj_training.TrainSettings(objective="distance", steps=300, learning_rate=1e-2,
                                schedule="cosine", weight_decay=0.0, log_every=100)
    trained = pj_training.train_projector(untrained, settings,
                                 pairs=pj_training.PromptPairs(src[:n_train], tgt[:n_train]))
    err = lambda p: np.mean(pj_training.l2_distances(p.project(src[n_train:], target=tgt_bb), tgt[n_train:])  # noqa: E731
                            / np.linalg.norm(tgt[n_train:].reshape(n_test, -1), axis=-1))
    assert err(trained) < 0.15 and err(trained) < 0.3 * err(untrained), (err(trained),
                                                                         err(untrained))
    projected = trained.project(src[0], target=tgt_bb)
    assert projected.shape == (length, d_tgt)
    tgt_bb.check_prompt(projected)
    with pytest.raises(ConfigError, match="width"):
        trained.project(tgt[:1])  # a target-width prompt is not a source prompt
    with pytest.raises(ConfigError, match="trained for target backbone"):
        trained.project(src[0], target=src_bb)


def test_projector_task_tuning_into_the_masked_lm(roberta, tweet_dir):
    """Task tuning with the MLM as the frozen target: a decoder-only-width (64) prompt
    projected to RoBERTa's width (32) is trained by the MLM's mask-slot loss."""
    from ptransfer.projector import model as pj
    from ptransfer.projector import training as pj_training

    task = tasks.get_task("tweeteval", roberta.vocab, add_eos=False, data_dir=tweet_dir,
                          mlm=roberta.config)
    batch = next(features.iterate_batches(task, "train", 8, {"inputs": 48, "targets": 1},
                                          shuffle=False, repeat=False))
    batch = {k: batch[k] for k in ("inputs", "inputs_mask", "targets", "targets_mask")}
    source = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    frozen = _host(roberta.params)
    spec = pj.ProjectorSpec(16, 64, roberta.d_model, "llama_tiny", roberta.name, hidden=32)
    untrained = pj.Projector.create(spec, 0)
    settings = pj_training.TrainSettings(objective="task", steps=60, learning_rate=3e-3,
                                weight_decay=0.0, log_every=20)

    def stream():
        while True:
            yield {"source_prompt": source, "batch": batch}

    trained = pj_training.train_projector(untrained, settings, task_data=stream(), target=roberta)
    module = spec.module()
    loss = lambda p: float(pj_training.task_loss(module, p.params, roberta.target_log_likelihood,  # noqa: E731
                                        roberta.params, source, batch))
    assert loss(trained) < 0.5 * loss(untrained), (loss(untrained), loss(trained))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(frozen, _host(roberta.params)))


def test_tiny_preset_label_words_are_the_built_in_tasks_words():
    """The tiny presets' vocabulary is fixed in backbones/ (which never reads tasks/):
    it must stay the set of label words the built-in tasks declare."""
    from ptransfer.backbones.mlm_vocab import TINY_LABEL_WORDS

    assert TINY_LABEL_WORDS == registered_mlm_label_words()
