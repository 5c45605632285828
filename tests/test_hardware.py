"""COMPUTE_DTYPE 'auto': bfloat16 only where the hardware has bf16 dot products."""

import dataclasses

from ptransfer.core.hardware import auto_compute_dtype, cpu_flags
from ptransfer.training.trainer import TrainConfig


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test cpu\nflags\t\t: {flags}\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    return str(path)


def test_cpu_flags_are_read_from_the_first_cpu(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, "fpu avx2 avx512f avx512_bf16")) == {
        "fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_auto_is_bfloat16_only_with_native_bf16_dot_products(tmp_path):
    zen3 = cpu_flags(_cpuinfo(tmp_path, "fpu avx2 fma"))
    assert auto_compute_dtype("cpu", zen3) is None  # float32: bf16 would be widened per op
    assert auto_compute_dtype("cpu", frozenset({"avx2", "avx512f", "avx512_bf16"})) == "bfloat16"
    assert auto_compute_dtype("cpu", frozenset({"amx_tile", "amx_bf16"})) == "bfloat16"
    assert auto_compute_dtype("gpu", zen3) == "bfloat16"
    assert auto_compute_dtype("tpu", frozenset()) == "bfloat16"


def test_train_config_resolves_auto_at_construction():
    cfg = TrainConfig(backbone="preset:llama_tiny", task="mr", model_dir="unused",
                      prompt_length=2, init_from="random", batch_size=2, train_steps=1,
                      compute_dtype="auto").validate()
    assert cfg.compute_dtype == auto_compute_dtype()
    assert cfg.identity()["compute_dtype"] == cfg.compute_dtype  # the run names its dtype
    assert dataclasses.replace(cfg, task="tweets").compute_dtype == cfg.compute_dtype
