"""PEFT fidelity: a prompt ptransfer trained, exported to PEFT, loaded by PEFT, gives ptransfer's logits.

    python -m bench.peft_fidelity [--task mr] [--steps 10] [--prompt-length 8] [--examples 8]

1. Prompt-tunes the real SmolLM2-135M (GGUF from the asset cache) for a few
   steps with the same gin files and Trainer as `ptransfer train`.
2. Exports the bank entry with `ptransfer bank export --format peft`.
3. Builds the matching HF `LlamaForCausalLM` two ways: from ptransfer's
   dequantized weights (`bench.hf_weights`, the very same float32 numbers:
   this isolates the adapter format) and, where transformers can read this
   GGUF, with transformers' own GGUF loading (`from_pretrained(gguf_file=)`,
   its own dequantization).
4. `PeftModel.from_pretrained(model, adapter_dir)` on each, and compares its
   logits on real validation inputs (one unpadded example per call, the
   virtual-token positions included) with `Backbone.logits(inputs, prompt=)`.

Writes bench/results/peft_fidelity-<date>.json with the max absolute logit
error, the max relative to the logits' scale and the next-token argmax
agreement. Needs the `bench` extra (torch, transformers, peft).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

from bench.common import load_average, machine, write_results


def _hf_from_ptransfer_weights(backbone, scratch: str):
    from bench import hf_weights, peft_side

    return peft_side.build_hf_model(hf_weights.export(backbone, os.path.join(scratch, "hf")))


def _hf_from_gguf(gguf_path: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf_path),
                                                gguf_file=os.path.basename(gguf_path),
                                                dtype=torch.float32)


def _compare(peft_model, inputs: list[np.ndarray], ours: list[np.ndarray]) -> dict:
    import torch

    abs_err, rel_err, agree, total = 0.0, 0.0, 0, 0
    with torch.no_grad():
        for ids, want in zip(inputs, ours):
            got = peft_model(input_ids=torch.from_numpy(ids[None].astype(np.int64))).logits
            got = got[0].float().numpy()                                  # [P + L, V]
            if got.shape != want.shape:
                raise AssertionError(f"PEFT logits {got.shape} vs ptransfer {want.shape}")
            err = np.abs(got - want)
            abs_err = max(abs_err, float(err.max()))
            rel_err = max(rel_err, float(err.max() / np.abs(want).max()))
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            total += got.shape[0]
    return {"max_abs_logit_error": abs_err, "max_error_over_max_logit": rel_err,
            "argmax_agreement": agree / total, "positions": total}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mr")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-length", type=int, default=8)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--input-length", type=int, default=48)
    args = ap.parse_args(argv)

    from peft import PeftModel

    from ptransfer import data
    from ptransfer.backbones import load_backbone, resolve_backbone_spec
    from ptransfer.bank import store as bank
    from ptransfer.cli import gin_setup
    from ptransfer.cli import main as cli
    from ptransfer.training.trainer import Trainer, build_train_config

    scratch = tempfile.mkdtemp(prefix="peft_fidelity_")
    try:
        model_dir = os.path.join(scratch, "run")
        gin_setup.parse_gin(["models/smollm2_135m.gin", "runs/prompt_tune.gin"], [
            f"TASK={args.task}", f"MODEL_DIR={model_dir}", f"TRAIN_STEPS={args.steps}",
            f"BATCH_SIZE={args.batch}", f"PROMPT_LENGTH={args.prompt_length}",
            f"INPUT_LENGTH={args.input_length}", "TARGET_LENGTH=4", "EVAL_EVERY=0",
            "OPTIMIZER='adamw_t5'", "LEARNING_RATE=0.003"])
        cfg = build_train_config()
        spec = resolve_backbone_spec(cfg.backbone)
        backbone = load_backbone(spec)
        result = Trainer(cfg, backbone=backbone).run()
        prompt, _, _ = bank.read_entry(result.bank_entry)

        adapter = os.path.join(scratch, "peft")
        if cli.main(["bank", "export", result.bank_entry, "--bank", os.path.join(model_dir, "bank"),
                     "--format", "peft", "--out", adapter]):
            raise SystemExit("ptransfer bank export failed")

        # real validation inputs, unpadded, as the eval stream cuts them
        task, _ = data.load_task(cfg.task, backbone, cfg.data_dir)
        batches = data.iterate_batches(task, "validation", 1, {"inputs": args.input_length,
                                                               "targets": 4},
                                       shuffle=False, repeat=False,
                                       truncate_inputs=data.default_truncation(backbone))
        inputs = []
        for batch in batches:
            inputs.append(batch["inputs"][0][batch["inputs_mask"][0] == 1])
            if len(inputs) == args.examples:
                break
        ours = [np.asarray(backbone.logits(ids[None], prompt=prompt))[0] for ids in inputs]

        checks = {}
        builders = {"hf_weights": lambda: _hf_from_ptransfer_weights(backbone, scratch),
                    "transformers_gguf": lambda: _hf_from_gguf(spec.split(":", 1)[1])}
        for name, build in builders.items():
            try:
                model = build().eval()
            except Exception as e:  # e.g. a quantization transformers cannot read
                checks[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
                continue
            peft_model = PeftModel.from_pretrained(model, adapter).eval()
            checks[name] = _compare(peft_model, inputs, ours)

        payload = {"machine": machine(), "load_average_end": load_average(),
                   "backbone": backbone.name, "task": cfg.task, "train_steps": result.steps,
                   "prompt_shape": list(prompt.shape), "examples": len(inputs),
                   "input_lengths": [int(len(x)) for x in inputs], "checks": checks}
        path = write_results("peft_fidelity", payload)
        print(f"{backbone.name}, prompt {list(prompt.shape)} after {result.steps} steps on "
              f"{cfg.task}, {len(inputs)} validation inputs:")
        for name, c in checks.items():
            if "error" in c:
                print(f"  {name:18s} not built: {c['error']}")
            else:
                print(f"  {name:18s} max |logit error| {c['max_abs_logit_error']:.3g} "
                      f"({c['max_error_over_max_logit']:.2g} of the max logit), argmax agreement "
                      f"{c['argmax_agreement']:.4f} over {c['positions']} positions")
        print(f"results: {path}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
