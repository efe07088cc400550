#!/usr/bin/env python3
"""Run llama.cpp's convert_hf_to_gguf.py on a bench checkpoint (made by bench/make_checkpoints.py).

    python3 bench/convert_gguf.py LLAMA_CPP_DIR PRE_TOKENIZER -- CKPT_DIR --outtype bf16 --outfile OUT.gguf

The converter identifies a BPE tokenizer by hashing the token ids it produces for a fixed test string and
refuses ids it has not seen (NotImplementedError "BPE pre-tokenizer was not recognized"). The bench
checkpoints carry a synthetic vocabulary of the right size, so no hash can match even though their
pre-tokenizer is the published one of the family. This wrapper changes nothing else: it runs the vendored,
unmodified converter, and only when that hash check fails it answers with PRE_TOKENIZER (the name llama.cpp
uses for that family's pre-tokenizer: "llama-bpe" for Llama 3 / Gemma here, "qwen2" for Qwen3). The token
ids do not matter for speed: llama-bench feeds random token ids.
"""

import runpy
import sys
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[3] != "--":
        sys.exit(__doc__)
    src = Path(sys.argv[1]).resolve()
    pre = sys.argv[2]
    script = src / "convert_hf_to_gguf.py"
    sys.path.insert(0, str(src / "gguf-py"))
    sys.path.insert(0, str(src))
    import conversion.base as base

    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            base.logger.warning(f"convert_gguf.py: unrecognised tokenizer hash; using pre-tokenizer {pre!r}")
            return pre

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script)] + sys.argv[4:]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
