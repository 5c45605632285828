"""The HF transformers + PEFT (PyTorch CPU) side of the benchmarks, run as a worker.

The model is built from the ptransfer config and loaded from the safetensors
the JAX side exported (`bench.hf_weights`), so both sides run the same
weights and the same prompt; the prompt-tuning loss of the first step and the
label scores must agree. Prompt tuning as a PEFT user writes it:
`get_peft_model(model, PromptTuningConfig(...))`, `model(**batch, labels=...)`,
`loss.backward()`, `torch.optim.AdamW` on the prompt only. Dropout is 0, as on
the JAX side.
"""

from __future__ import annotations

import os
import time

from bench import worker

CORES = worker.pin_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(len(CORES))


def build_hf_model(export: dict):
    """The HF model with the exported weights (float32)."""
    from safetensors.torch import load_file

    fam, c = export["family"], export["config"]
    directory = os.path.dirname(export["path"])
    if fam == "t5":
        from transformers import T5Config, T5ForConditionalGeneration

        cfg = T5Config(vocab_size=c["vocab_size"], d_model=c["d_model"], d_kv=c["head_dim"],
                       d_ff=c["d_ff"], num_layers=c["num_layers"],
                       num_decoder_layers=c["num_decoder_layers"], num_heads=c["num_heads"],
                       relative_attention_num_buckets=c["relative_attention_num_buckets"],
                       relative_attention_max_distance=c["relative_attention_max_distance"],
                       dropout_rate=0.0, layer_norm_epsilon=c["layer_norm_epsilon"],
                       feed_forward_proj=c["feed_forward"],
                       tie_word_embeddings=c["tie_word_embeddings"], pad_token_id=c["pad_id"],
                       eos_token_id=c["eos_id"], decoder_start_token_id=c["decoder_start_id"],
                       architectures=["T5ForConditionalGeneration"])
        cls = T5ForConditionalGeneration
    elif fam == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=c["vocab_size"], hidden_size=c["d_model"],
                          intermediate_size=c["d_ff"], num_hidden_layers=c["num_layers"],
                          num_attention_heads=c["num_heads"], num_key_value_heads=c["num_kv_heads"],
                          head_dim=c["head_dim"], rms_norm_eps=c["norm_eps"],
                          rope_parameters={"rope_type": "default", "rope_theta": c["rope_theta"]},
                          tie_word_embeddings=c["tie_word_embeddings"], max_position_embeddings=8192,
                          attention_dropout=0.0, architectures=["LlamaForCausalLM"])
        cls = LlamaForCausalLM
    elif fam == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        types = ["full_attention" if (i + 1) % c["sliding_window_pattern"] == 0 else "sliding_attention"
                 for i in range(c["num_layers"])]
        cfg = Gemma3TextConfig(
            vocab_size=c["vocab_size"], hidden_size=c["d_model"], intermediate_size=c["d_ff"],
            num_hidden_layers=c["num_layers"], num_attention_heads=c["num_heads"],
            num_key_value_heads=c["num_kv_heads"], head_dim=c["head_dim"],
            query_pre_attn_scalar=int(c["query_pre_attn_scalar"]), sliding_window=c["sliding_window"],
            layer_types=types, rms_norm_eps=c["norm_eps"], max_position_embeddings=8192,
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": c["rope_theta"]},
                             "sliding_attention": {"rope_type": "default",
                                                   "rope_theta": c["rope_local_theta"]}},
            bos_token_id=c["bos_id"], tie_word_embeddings=True, attention_dropout=0.0,
            architectures=["Gemma3ForCausalLM"])
        cls = Gemma3ForCausalLM
    else:
        raise ValueError(fam)
    cfg.save_pretrained(directory)
    model = cls.from_pretrained(directory, dtype=torch.float32)
    if fam == "t5" and not c["tie_word_embeddings"]:
        # transformers 5.x ties T5's lm_head to `shared` even for v1.1; give it its own head.
        head = load_file(export["path"])["lm_head.weight"]
        model.lm_head.weight = torch.nn.Parameter(head, requires_grad=False)
    return model


def with_bos(export: dict, x: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, 1 + L] with the BOS a PEFT user's Gemma tokenizer adds (the
    ptransfer backbone adds it itself, after the prompt, as PEFT's layout has it)."""
    bos = export["config"].get("bos_id") if export["family"] == "gemma3" else None
    if bos is None:
        return x
    return torch.cat([torch.full((x.shape[0], 1), int(bos), dtype=x.dtype), x], dim=1)


def _peft(model, family: str, prompt: np.ndarray):
    from peft import PromptTuningConfig, get_peft_model

    task = "SEQ_2_SEQ_LM" if family == "t5" else "CAUSAL_LM"
    pm = get_peft_model(model, PromptTuningConfig(task_type=task, num_virtual_tokens=len(prompt)))
    weight = pm.prompt_encoder["default"].embedding.weight
    with torch.no_grad():  # rows beyond the first P (decoder copy for seq2seq) are unused
        weight.copy_(torch.from_numpy(np.tile(prompt, (weight.shape[0] // len(prompt), 1))))
    return pm, weight


class PeftSide:
    # ---- prompt-tuning step ------------------------------------------------

    def step_setup(self, shape: str, export: dict, seed: int = 0):
        from bench import shapes

        s = shapes.STEP_SHAPES[shape]
        t0 = time.perf_counter()
        self.family = export["family"]
        model = build_hf_model(export)
        load_s = time.perf_counter() - t0
        data = shapes.step_data(s, export["config"]["vocab_size"], export["config"]["d_model"], seed)
        self.pm, weight = _peft(model, self.family, data["prompt"])
        self.pm.train()
        trainable = [p for p in self.pm.parameters() if p.requires_grad]
        assert len(trainable) == 1 and trainable[0] is weight, "PEFT must train the prompt only"
        self.opt = torch.optim.AdamW(trainable, lr=5e-3, weight_decay=1e-5)
        x = with_bos(export, torch.from_numpy(data["inputs"]).long())
        y = torch.from_numpy(data["targets"]).long()
        if self.family == "t5":
            self.batch = {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": y}
        else:
            ids = torch.cat([x, y], dim=1)
            self.batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                          "labels": torch.cat([torch.full_like(x, -100), y], dim=1)}
        out = {"load_s": load_s, "threads": torch.get_num_threads(), "cores": CORES,
               "rss_after_load_mb": worker.rss_mb(), "torch": torch.__version__,
               "attn_implementation": getattr(model.config, "_attn_implementation", None),
               "peak_rss_load_mb": worker.peak_rss_mb()}
        worker.reset_peak_rss()
        return out

    def _one_step(self, autocast: bool = False) -> tuple[float, float, float]:
        """(wall seconds, process CPU seconds, loss) of one step; `autocast`: the
        forward under `torch.autocast("cpu", dtype=torch.bfloat16)`, as a PEFT user
        turns on mixed precision (backward outside it, as PyTorch recommends)."""
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = self.pm(**self.batch).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0, float(loss.detach())

    def step_warmup(self, steps: int = 2, autocast=(False,)):
        """{"float32" | "bfloat16": warm-up record} for each autocast setting."""
        out = {}
        for ac in autocast:
            times, _, losses = zip(*[self._one_step(ac) for _ in range(steps)])
            out["bfloat16" if ac else "float32"] = {"first_step_s": times[0],
                                                    "warm_times": list(times[1:]), "loss0": losses[0]}
        peak = worker.peak_rss_mb()
        worker.reset_peak_rss()
        for rec in out.values():
            rec["peak_rss_warmup_mb"] = peak
        return out

    def step_run(self, steps: int = 1, autocast: bool = False):
        """[[wall s, CPU s] per step]."""
        return [list(self._one_step(autocast)[:2]) for _ in range(steps)]

    def step_finish(self):
        return {"peak_rss_mb": worker.peak_rss_mb(), "rss_mb": worker.rss_mb()}

    # ---- PEFT-style rank classification --------------------------------------

    def eval_setup(self, export: dict, inputs, prompt, candidates, candidates_mask, batch: int):
        t0 = time.perf_counter()
        self.family = export["family"]
        model = build_hf_model(export)
        self.pm, _ = _peft(model, self.family, np.asarray(prompt, np.float32))
        self.pm.eval()
        self.inputs = with_bos(export, torch.tensor(inputs, dtype=torch.long))
        self.prompt_len = len(prompt)
        self.candidates = {int(k): (torch.tensor(v, dtype=torch.long),
                                    torch.tensor(candidates_mask[k], dtype=torch.bool))
                           for k, v in candidates.items()}
        self.batch_size = batch
        worker.reset_peak_rss()
        return {"load_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}

    def _label_scores(self, x, cand, cmask) -> torch.Tensor:
        """[B] log-likelihood of one label word: one HF forward with labels."""
        b = x.shape[0]
        labels = torch.where(cmask, cand, torch.full_like(cand, -100))[None].repeat(b, 1)
        if self.family == "t5":
            out = self.pm(input_ids=x, attention_mask=torch.ones_like(x), labels=labels)
            logits = out.logits                                   # [B, Lt, V]
        else:
            ids = torch.cat([x, cand[None].expand(b, -1)], dim=1)
            out = self.pm(input_ids=ids, attention_mask=torch.ones_like(ids),
                          labels=torch.cat([torch.full_like(x, -100), labels], dim=1))
            start = self.prompt_len + x.shape[1] - 1              # logits include the prompt
            logits = out.logits[:, start:start + cand.shape[0]]   # positions predicting the label
        lp = torch.log_softmax(logits.float(), dim=-1)
        picked = lp.gather(-1, cand[None, :, None].expand(b, -1, 1))[..., 0]
        return (picked * cmask[None].float()).sum(-1)

    def eval_run(self, labels: int, examples: int | None = None):
        """PEFT-style scores [N, C] of the first `examples` (None: all) and the seconds taken."""
        k = int(labels)
        n = len(self.inputs) if examples is None else int(examples)
        cand, cmask = self.candidates[k]
        t0 = time.perf_counter()
        out = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                x = self.inputs[start:min(start + self.batch_size, n)]
                out.append(torch.stack([self._label_scores(x, cand[j], cmask[j])
                                        for j in range(k)], dim=1))
        scores = torch.cat(out).numpy()
        return {"seconds": time.perf_counter() - t0, "scores": scores.tolist()}

    def eval_finish(self):
        return {"peak_rss_mb": worker.peak_rss_mb()}


if __name__ == "__main__":
    worker.serve(PeftSide())
