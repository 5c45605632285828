"""Optional extra arrays of a bank entry (checksummed) and its best / final prompts."""

import numpy as np
import pytest

from ptransfer.bank import store as bank
from ptransfer.core.errors import CheckpointError, DataError

META = {"init": "vocab", "steps": 10, "best_score": 0.5, "metric": "accuracy", "seed": 0,
        "exported": "best"}


def test_extras_are_kept_checksummed_and_best_and_final_prompts_are_read(tmp_path):
    best, final = np.ones((2, 3), np.float32), np.full((2, 3), 2.0, np.float32)
    path = bank.write_entry(str(tmp_path), "bb", "mr", "run", best, META,
                            extras={bank.FINAL_PROMPT: final, "adam_mu": final * 0})
    np.testing.assert_array_equal(bank.read_prompt(path, "best"), best)
    np.testing.assert_array_equal(bank.read_prompt(path, "final"), final)
    np.testing.assert_array_equal(bank.read_extra(path, "adam_mu"), np.zeros((2, 3)))
    assert bank.read_extra(path, "adam_nu") is None
    np.save(tmp_path / "bb" / "mr" / "run" / "adam_mu.npy", final)  # tampered
    with pytest.raises(CheckpointError, match="adam_mu.npy does not match its checksum"):
        bank.read_extra(path, "adam_mu")
    old = bank.write_entry(str(tmp_path), "bb", "mr", "old", best, META)
    with pytest.raises(DataError, match="keeps only its best prompt, not the final one"):
        bank.read_prompt(old, "final")
