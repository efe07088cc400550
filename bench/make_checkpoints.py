#!/usr/bin/env python3
"""Random-weight checkpoints with the exact shapes of published models, for speed benchmarks.

    python3 bench/make_checkpoints.py [OUT_DIR] [--models qwen3-0.6b,llama-3.2-1b,gemma-3-1b,llama-3.1-8b] [--force]

OUT_DIR defaults to $UNICORN_BENCH_CACHE/checkpoints (~/.cache/unicorn-bench/checkpoints); each model goes to
OUT_DIR/NAME/. An existing checkpoint (its config.json and a .done marker) is kept unless --force.

What each checkpoint holds:
- config.json: the published config.json of the model (Qwen/Qwen3-0.6B, meta-llama/Llama-3.2-1B,
  google/gemma-3-1b-pt, meta-llama/Llama-3.1-8B), written verbatim from PUBLISHED below (the old spelling:
  rope_theta / rope_scaling / sliding_window_pattern, as on the Hub), after transformers' own copy.
- model*.safetensors: bf16 weights written by transformers' save_pretrained (sharded at 2 GB). The model is
  built from the config with dtype bfloat16 and transformers' initialisation (normal, std
  initializer_range = 0.02; norms 1 or 0 as the architecture has them). Speed does not depend on the values.
  Peak memory is about one copy of the bf16 weights (the 8B needs ~16 GB of RAM while it is made).
- tokenizer.json (+ tokenizer_config.json): a byte-level BPE built directly (no training) with exactly
  config.vocab_size tokens: the 256 byte symbols, then merges of a 64-symbol alphabet into 2- and 3-symbol
  tokens until the vocabulary is full, with the model's special tokens at their published ids (Llama 3:
  <|begin_of_text|> 128000 ... ; Qwen: <|endoftext|> 151643, <|im_start|>, <|im_end|>; Gemma: <pad> 0, <eos> 1,
  <bos> 2, <unk> 3). The pre-tokenizer is the published one of the family (Llama 3's split regex for Llama
  and Gemma, Qwen2's for Qwen3), so llama.cpp's matching pre-tokenizer ("llama-bpe" / "qwen2") is right for
  it. The token ids are of course not the published ones, so llama.cpp's converter cannot recognise the
  tokenizer by its hash; bench/convert_gguf.py supplies the pre-tokenizer name instead (see there).
- generation_config.json from transformers.

With --fast the weights are not initialised by transformers: the model is built on the meta device for its
tensors' names and shapes, and each tensor is written straight to the safetensors files as random bf16 bits of
the init's scale (|x| in [2^-7, 2^-5), random sign), norms 1 (Gemma's 0: it adds 1), biases 0. The 8B takes
seconds to write where the initialisation took 318 s on a 16-core machine; transformers, llama.cpp's converter
and unicornc read it as any checkpoint.

With --layers N the published config is cut to its first N layers (num_hidden_layers, and the per-layer lists
that follow it) and the checkpoint goes to OUT_DIR/NAME-Nl/: every kernel of a layer is the full model's, so a
few layers serve per-kernel measurements (`unicorn-rt --profile`) at a fraction of the size and time.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

# ----------------------------------------------------------------------------------------------------------
# The published config.json files (values as on the Hugging Face Hub).
# ----------------------------------------------------------------------------------------------------------

PUBLISHED = {
    # Qwen/Qwen3-0.6B
    "qwen3-0.6b": {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "model_type": "qwen3",
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0",
        "use_cache": True,
        "vocab_size": 128256,
    },
    # google/gemma-3-1b-pt
    "gemma-3-1b": {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": 2,
        "cache_implementation": "hybrid",
        "eos_token_id": 1,
        "final_logit_softcapping": None,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 1152,
        "initializer_range": 0.02,
        "intermediate_size": 6912,
        "max_position_embeddings": 32768,
        "model_type": "gemma3_text",
        "num_attention_heads": 4,
        "num_hidden_layers": 26,
        "num_key_value_heads": 1,
        "pad_token_id": 0,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
        "use_cache": True,
        "vocab_size": 262144,
    },
    # meta-llama/Llama-3.1-8B
    "llama-3.1-8b": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.43.0.dev0",
        "use_cache": True,
        "vocab_size": 128256,
    },
}

ALL_MODELS = list(PUBLISHED)
DEFAULT_MODELS = ["qwen3-0.6b", "llama-3.2-1b", "gemma-3-1b", "llama-3.1-8b"]

# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------

# Llama 3's pre-tokenizer split pattern (tokenizer.json of meta-llama/Llama-3.x).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2 / Qwen3's split pattern (tokenizer.json of Qwen/Qwen3-0.6B).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_specials():
    names = {
        128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>",
        128007: "<|end_header_id|>", 128008: "<|eom_id|>", 128009: "<|eot_id|>", 128010: "<|python_tag|>",
        128004: "<|finetune_right_pad_id|>",
    }
    out = {}
    r = 0
    for i in range(128000, 128256):
        if i in names:
            out[i] = names[i]
        else:
            out[i] = f"<|reserved_special_token_{r}|>"
            r += 1
    return out


TOKENIZER = {
    # family -> (pre-tokenizer pattern, llama.cpp pre-tokenizer name, specials {id: text}, bos, eos, add_bos)
    "qwen3-0.6b": dict(pattern=QWEN2_PATTERN, llama_cpp_pre="qwen2",
                       specials={151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"},
                       bos=None, eos="<|im_end|>", add_bos=False),
    "llama-3.2-1b": dict(pattern=LLAMA3_PATTERN, llama_cpp_pre="llama-bpe", specials=llama3_specials(),
                         bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos=True),
    "llama-3.1-8b": dict(pattern=LLAMA3_PATTERN, llama_cpp_pre="llama-bpe", specials=llama3_specials(),
                         bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos=True),
    "gemma-3-1b": dict(pattern=LLAMA3_PATTERN, llama_cpp_pre="llama-bpe",
                       specials={0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"},
                       bos="<bos>", eos="<eos>", add_bos=True),
}


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_tokenizer(name: str, vocab_size: int):
    """A byte-level BPE with exactly vocab_size ids; returns a tokenizers.Tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    spec = TOKENIZER[name]
    specials = spec["specials"]
    byte_syms = list(bytes_to_unicode().values())
    # 64 symbols for the merged tokens: space (G-dot), lowercase, uppercase, digits, '.'
    alphabet = ["\u0120"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + \
        [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("0"), ord("9") + 1)] + ["."]
    assert len(alphabet) == 64

    n_regular = vocab_size - len(specials)
    regular = list(byte_syms)
    merges = []
    # 2-symbol tokens, then 3-symbol tokens (2-symbol + 1), in a fixed order, until the vocabulary is full.
    pairs = [a + b for a in alphabet for b in alphabet]
    for p in pairs:
        if len(regular) >= n_regular:
            break
        merges.append((p[0], p[1]))
        regular.append(p)
    for p in pairs:
        for c in alphabet:
            if len(regular) >= n_regular:
                break
            merges.append((p, c))
            regular.append(p + c)
        if len(regular) >= n_regular:
            break
    if len(regular) < n_regular:
        raise SystemExit(f"{name}: vocabulary {vocab_size} too large for this construction")

    vocab = {}
    it = iter(regular)
    for i in range(vocab_size):
        vocab[specials[i] if i in specials else next(it)] = i
    assert len(vocab) == vocab_size

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(specials[i], special=True, normalized=False) for i in sorted(specials)])
    if spec["add_bos"]:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return tok


def write_tokenizer(name: str, cfg: dict, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    spec = TOKENIZER[name]
    tok = build_tokenizer(name, cfg["vocab_size"])
    kw = {"eos_token": spec["eos"]}
    if spec["bos"]:
        kw["bos_token"] = spec["bos"]
    if 0 in spec["specials"] and spec["specials"][0] == "<pad>":
        kw["pad_token"] = "<pad>"
        kw["unk_token"] = "<unk>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(str(out))
    # The converter and unicornc read tokenizer.json; keep the class generic so that any transformers version
    # loads tokenizer.json as it is (no architecture-specific rebuilding of the pipeline).
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["add_bos_token"] = spec["add_bos"]
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n")
    # Self-check: the vocabulary loads back with exactly vocab_size ids and round-trips text.
    from tokenizers import Tokenizer

    back = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert back.get_vocab_size(with_added_tokens=True) == cfg["vocab_size"], back.get_vocab_size()
    text = "Hello world, this is a test. 123"
    ids = back.encode(text, add_special_tokens=False).ids
    assert back.decode(ids) == text, back.decode(ids)


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------


def write_random_bf16(model, cfg: dict, out: Path, seed: int) -> tuple[int, int]:
    """The weights of `model` (built on the meta device: names and shapes only) as random bf16 bits, written
    directly (seconds for an 8B model, where transformers' initialisation takes minutes): every matrix and
    embedding x with |x| in [2^-7, 2^-5) (exponent drawn from three, random sign and mantissa: the scale of
    transformers' normal init with std 0.02), every norm weight 1 (0 where the architecture adds 1 to it,
    Gemma's), biases 0. Shards of at most 2 GB with an index, as save_pretrained writes them. Returns
    (parameters, bytes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    zero_centered = cfg.get("model_type", "").startswith("gemma")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")]

    def values(key: str, shape: tuple) -> "np.ndarray":
        if key.endswith("norm.weight") or (len(shape) == 1 and "norm" in key):
            return np.full(shape, 0 if zero_centered else 0x3F80, dtype=np.uint16)
        if key.endswith(".bias"):
            return np.zeros(shape, dtype=np.uint16)
        bits = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
        exponent = ((bits >> 7) % 3 + 120).astype(np.uint16)
        return (bits & 0x807F) | (exponent << 7)

    shards, shard, size, total, params = [], [], 0, 0, 0
    for key, shape in tensors:
        n = int(np.prod(shape))
        if shard and size + 2 * n > 2_000_000_000:
            shards.append(shard)
            shard, size = [], 0
        shard.append((key, shape))
        size += 2 * n
    shards.append(shard)
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key, shape in shard:
            n = 2 * int(np.prod(shape))
            header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[key] = file
        head = json.dumps(header).encode()
        head += b" " * (-len(head) % 8)
        with open(out / file, "wb") as f:
            f.write(len(head).to_bytes(8, "little"))
            f.write(head)
            for key, shape in shard:
                f.write(values(key, shape).tobytes())
                params += int(np.prod(shape))
        total += offset
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return params, total


def make_one(name: str, out: Path, force: bool, seed: int, fast: bool = False, layers: int | None = None) -> None:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    done = out / ".done"
    if done.exists() and not force:
        print(f"{name}: kept {out}", flush=True)
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cfg = dict(PUBLISHED[name])
    if layers is not None:
        # The published shape cut to its first `layers` layers: every kernel the same, the model smaller.
        cfg["num_hidden_layers"] = layers
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = min(cfg["max_window_layers"], layers)
        if "layer_types" in cfg:
            cfg["layer_types"] = cfg["layer_types"][:layers]
    t0 = time.time()
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    config = AutoConfig.from_pretrained(str(out))
    if fast:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        t1 = time.time()
        n_params, size = write_random_bf16(model, cfg, out, seed)
        write_tokenizer(name, cfg, out)
        done.write_text(json.dumps({"model": name, "params": n_params, "bytes": size, "seed": seed, "fast": True,
                                    "transformers": transformers.__version__}) + "\n")
        print(f"{name}: {n_params / 1e9:.3f} B parameters, {size / 2**30:.2f} GiB bf16 (random bits), "
              f"written in {time.time() - t1:.0f} s -> {out}", flush=True)
        return
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # parameters are created (and initialised) directly in bf16
    try:
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        except TypeError:  # transformers < 4.56 spells it torch_dtype
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(torch.bfloat16).eval()
    n_params = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    model.save_pretrained(str(out), max_shard_size="2GB")
    del model
    # The published config.json, verbatim (transformers writes its own newer spelling; the weights are the same).
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    write_tokenizer(name, cfg, out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    done.write_text(json.dumps({"model": name, "params": n_params, "bytes": size, "seed": seed,
                                "transformers": transformers.__version__, "torch": torch.__version__}) + "\n")
    print(f"{name}: {n_params / 1e9:.3f} B parameters, {size / 2**30:.2f} GiB bf16, built in {t1 - t0:.0f} s, "
          f"written in {time.time() - t1:.0f} s -> {out}", flush=True)


def main() -> None:
    cache = Path(os.environ.get("UNICORN_BENCH_CACHE", Path.home() / ".cache" / "unicorn-bench"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?", type=Path, default=cache / "checkpoints")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(ALL_MODELS)}")
    ap.add_argument("--force", action="store_true", help="remake checkpoints that exist")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast", action="store_true",
                    help="random bf16 bits of the init's scale for the model's own tensors, no transformers init "
                         "(seconds, not minutes, for the 8B; speed does not depend on the values)")
    ap.add_argument("--layers", type=int, default=None,
                    help="only the first N layers of the published shape, into MODEL-Nl (per-kernel work on a "
                         "smaller checkpoint: each layer's kernels are the full model's)")
    ap.add_argument("--tokenizer-only", action="store_true", help="(re)write only tokenizer files of existing checkpoints")
    a = ap.parse_args()
    if a.layers is not None and a.layers < 1:
        sys.exit(f"make_checkpoints.py: --layers must be at least 1, not {a.layers}")
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    for m in models:
        if m not in PUBLISHED:
            sys.exit(f"make_checkpoints.py: unknown model {m!r} (known: {', '.join(ALL_MODELS)})")
    for m in models:
        if a.tokenizer_only:
            write_tokenizer(m, PUBLISHED[m], a.out_dir / m)
            print(f"{m}: tokenizer written", flush=True)
        else:
            name = m if a.layers is None else f"{m}-{a.layers}l"
            make_one(m, a.out_dir / name, a.force, a.seed, a.fast, a.layers)


if __name__ == "__main__":
    main()
