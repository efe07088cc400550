#!/usr/bin/env python3
"""Train the demo model in examples/demo/: a small Llama that writes English and answers in a chat template.

What it makes (in --out, default examples/demo):
  a byte-level BPE tokenizer (4096 tokens) with <pad> <bos> <eos> and the chat tokens <|system|> <|user|>
  <|assistant|> <|end|>; tokenizer_config.json carries a Hugging Face style Jinja `chat_template`;
  generation_config.json stops at <eos> and at <|end|> (the end of a turn);
  a LlamaForCausalLM of about 5.5 million parameters (hidden 256, 6 layers, 4 heads, 2 kv heads, MLP 704,
  tied embeddings, context 512), saved as bfloat16 safetensors (about 11 MB).

What it learns from: the six novels of Jane Austen (Sense and Sensibility, Pride and Prejudice, Mansfield Park,
Emma, Northanger Abbey, Persuasion; about 4 MB of text, public domain), as Debian ships them in the package
r-cran-janeaustenr (the GNU R package janeaustenr, MIT; the novels' text is from Project Gutenberg). The text is
not committed: `--prepare` fetches the package by name (apt-get download), unpacks it (dpkg-deb -x), reads the
novels out of the R data files with the small R-serialization reader below (no R needed) and writes them as
plain text to --data. A machine without apt or network (a GPU box) gets that folder carried to it.
The training mixes
  prose: runs of consecutive paragraphs of one chapter (about 1,400 characters), each as <bos> text <eos>;
  chats: rendered through the chat template, so `--chat` style prompts are in distribution:
    - conversations made of the novels' own dialogue: consecutive paragraphs that open with speech become
      alternating user / assistant turns (only the words inside the quotation marks are kept);
    - requests answered with a narrative paragraph: "Tell me a story about Emma.", "Continue the story: <the
      paragraph's first sentence>", "Describe a scene from Persuasion.", ...;
    - some with a system message.
Every 40th chapter (its prose and its chats) is held out for the validation loss, and the weights with the best
validation loss are kept: 4 MB is little for 5.5 M parameters, and the model overfits past about 1,500 steps (with
the residual dropout of 0.2 that this script adds through hooks; the saved model has none).

Usage (from the repository root):
  python3 examples/train_demo.py --prepare         # fetch and unpack the text into .demo_data/austen (Debian)
  python3 examples/train_demo.py --check-data      # the documents and the tokenizer only (no torch needed)
  python3 examples/train_demo.py                   # train (1500 steps of 32 x 512 tokens) into examples/demo
  python3 examples/train_demo.py --device cpu --steps 10 --out /tmp/demo-smoke   # a quick check of the whole path
Time: about 70 s on an H100 (47 s of it training, 31 ms a step); on 2 CPU cores 6 to 13 s a step (hours).
Flags: --data DIR (the prepared text; default .demo_data/austen), --out DIR, --steps N, --device cpu|cuda,
--batch, --ctx, --lr, --dropout, --vocab, --seed, --threads.

Needs: tokenizers (and, to train, torch + transformers + safetensors); --prepare needs apt-get and dpkg-deb
(Debian) and nothing else. Everything is seeded: on one machine the tokenizer and the data are identical from
run to run (the same tokenizer.json and configs came out on this machine and on the GPU machine); the weights
differ from run to run on a GPU (its float nondeterminism), their validation loss does not (3.669 twice).
examples/demo was made with torch 2.11.0, transformers 5.17.0, tokenizers 0.23.2 on an H100; the CPU path was
checked with torch 2.15.0, transformers 5.25.0, tokenizers 0.23.3.
"""

import argparse
import gzip
import hashlib
import json
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".demo_data" / "austen"
DEFAULT_OUT = REPO / "examples" / "demo"

DEB = "r-cran-janeaustenr"
R_DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
NOVELS = {  # the R data set's name -> title
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}

SPECIALS = ["<pad>", "<bos>", "<eos>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END = range(len(SPECIALS))

# Hugging Face style: messages with role system / user / assistant; add_generation_prompt opens the assistant's
# turn. render_chat() below produces the same string (checked against jinja2 when it is installed).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def render_chat(messages, add_generation_prompt=False) -> str:
    s = SPECIALS[BOS]
    for m in messages:
        assert m["role"] in ("system", "user", "assistant"), m["role"]
        s += f"<|{m['role']}|>\n{m['content']}<|end|>\n"
    if add_generation_prompt:
        s += "<|assistant|>\n"
    return s


# ----------------------------------------------------------------------------------------------------------
# Fetching the text: the Debian package, and a reader for R's serialization format (XDR, versions 2 and 3),
# enough for the lazy-load database (Rdata.rdx / Rdata.rdb) that holds the novels as character vectors.

class RReader:
    def __init__(self, b: bytes):
        self.b, self.p, self.refs = b, 0, []

    def int(self) -> int:
        v = struct.unpack_from(">i", self.b, self.p)[0]
        self.p += 4
        return v

    def take(self, n: int) -> bytes:
        v = self.b[self.p:self.p + n]
        self.p += n
        return v

    def read(self):
        if self.take(2) != b"X\n":
            raise ValueError("not an R XDR serialization")
        version = self.int()
        self.int(), self.int()  # writer version, oldest reader version
        if version == 3:
            self.take(self.int())  # native encoding
        return self.item()

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
        if t == 255:  # REFSXP
            i = flags >> 8
            return self.refs[(i or self.int()) - 1]
        if t in (254, 253, 252, 251, 250, 242, 241):  # NULL, environments and markers
            return None
        if t in (249, 248):  # namespace / package environment: a persistent name
            self.int()
            v = ("env", [self.item() for _ in range(self.int())])
            self.refs.append(v)
            return v
        if t == 1:  # SYMSXP
            v = ("sym", self.item())
            self.refs.append(v)
            return v
        if t in (2, 3, 5, 6, 17, 239, 240):  # pairlist-like: [attr] [tag] car cdr
            attr = self.item() if has_attr else None
            tag = self.item() if has_tag else None
            car = self.item()
            return ("pair", tag, car, self.item(), attr)
        if t == 4:  # ENVSXP
            self.int()
            env = {}
            self.refs.append(env)
            for k in ("enclos", "frame", "hashtab", "attr"):
                env[k] = self.item()
            return env
        if t == 9:  # CHARSXP
            n = self.int()
            return None if n == -1 else self.take(n).decode("latin-1" if flags & (1 << 2) else "utf-8")
        if t in (10, 13):  # logical, integer
            n = self.int()
            v = list(struct.unpack_from(f">{n}i", self.b, self.p))
            self.p += 4 * n
        elif t == 14:  # double
            n = self.int()
            v = list(struct.unpack_from(f">{n}d", self.b, self.p))
            self.p += 8 * n
        elif t in (16, 19, 20):  # character, list, expression
            v = [self.item() for _ in range(self.int())]
        elif t == 24:  # raw
            v = self.take(self.int())
        elif t == 238:  # ALTREP: class info, state, attributes
            return ("altrep", self.item(), self.item(), self.item())
        else:
            raise ValueError(f"R object of type {t} is not handled")
        attr = self.item() if has_attr else None
        return ("vec", t, v, attr)


def r_names(attr):
    while attr:
        _, tag, car, cdr, _ = attr
        if tag and tag[1] == "names":
            return car[2]
        attr = cdr
    return None


def read_rdata(stem: Path) -> dict:
    """name -> R object, from a lazy-load database stem.rdx (gzip) + stem.rdb (entries: 4-byte length, zlib)."""
    index = RReader(gzip.decompress(stem.with_suffix(".rdx").read_bytes())).read()
    fields = dict(zip(r_names(index[3]), index[2]))
    variables = fields["variables"]
    rdb = stem.with_suffix(".rdb").read_bytes()
    out = {}
    for name, where in zip(r_names(variables[3]), variables[2]):
        off, length = (int(x) for x in where[2])
        blob = rdb[off:off + length]
        out[name] = RReader(zlib.decompress(blob[4:])).read()
    return out


def prepare(data: Path) -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            sys.exit(f"--prepare needs {tool} (Debian); prepare {data} on such a machine and carry it here")
    data.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o777)  # apt downloads as the user _apt where it can write
        subprocess.run(["apt-get", "download", DEB], cwd=tmp, check=True)
        deb = next(tmp.glob(f"{DEB}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
        objs = read_rdata(tmp / "x" / R_DATA)
        lines = {}
        for name in NOVELS:
            kind, t, v, _ = objs[name]
            assert kind == "vec" and t == 16, (name, kind, t)
            lines[name] = [x or "" for x in v]
            (data / f"{name}.txt").write_text("\n".join(lines[name]) + "\n", encoding="utf-8")
        copyright_ = (tmp / "x" / "usr/share/doc" / DEB / "copyright").read_text()
        (data / "copyright").write_text(copyright_)
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        size = sum((data / f"{n}.txt").stat().st_size for n in NOVELS)
        (data / "SOURCE.md").write_text(
            f"The six novels of Jane Austen (public domain; the text is Project Gutenberg's), from the Debian "
            f"package {deb.name}\n(sha256 {sha}), the GNU R package janeaustenr (MIT, see `copyright`).\n"
            f"Made by `python3 examples/train_demo.py --prepare`; {size} bytes of text.\n")
    print(f"prepared {data}: {', '.join(NOVELS.values())} from {deb.name} ({size / 1e6:.2f} MB of text)")


# ----------------------------------------------------------------------------------------------------------
# From the novels to training documents.

HEADING = re.compile(r"^(CHAPTER|Chapter|VOLUME|Volume)\b|^(THE END|FINIS|Finis)$")
CHARACTERS = {  # the people a "Tell me about ..." request can name; the regex allows "Mr" and "Mr."
    "emma": ["Emma", "Mr. Knightley", "Harriet", "Mr. Elton", "Frank Churchill", "Jane Fairfax", "Miss Bates",
             "Mr. Woodhouse", "Mrs. Weston", "Mrs. Elton"],
    "prideprejudice": ["Elizabeth", "Mr. Darcy", "Jane", "Mr. Bingley", "Mr. Bennet", "Mrs. Bennet", "Lydia",
                       "Wickham", "Mr. Collins", "Charlotte", "Lady Catherine"],
    "sensesensibility": ["Elinor", "Marianne", "Edward", "Willoughby", "Colonel Brandon", "Mrs. Jennings",
                         "Lucy", "Mrs. Dashwood", "Sir John"],
    "mansfieldpark": ["Fanny", "Edmund", "Miss Crawford", "Henry Crawford", "Sir Thomas", "Lady Bertram",
                      "Mrs. Norris", "Julia", "Maria", "William"],
    "northangerabbey": ["Catherine", "Henry Tilney", "Eleanor", "Isabella", "John Thorpe", "General Tilney",
                        "Mrs. Allen"],
    "persuasion": ["Anne", "Captain Wentworth", "Sir Walter", "Lady Russell", "Mary", "Louisa", "Mr. Elliot",
                   "Admiral Croft", "Mrs. Smith"],
}
STORY_ASKS = [
    "Tell me a story.", "Tell me a story, please.", "Write a paragraph in the style of Jane Austen.",
    "Tell me something from {title}.", "Describe a scene from {title}.", "What happens in {title}?",
]
NAMED_ASKS = ["Tell me about {name}.", "Tell me a story about {name}.", "What did {name} do?",
              "Write a paragraph about {name}."]
HOLD_OUT = 40  # every 40th chapter is the validation set
SYSTEMS = ["You are a helpful assistant.", "You are a character in a novel by Jane Austen.",
           "You are a storyteller. Answer in the style of Jane Austen.", "Answer politely."]


def chapters(lines):
    """A novel's lines -> chapters, each a list of paragraphs (single-spaced, italics marks dropped)."""
    paras, cur, out = [], [], []
    for line in lines + [""]:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    started = False
    for p in paras:
        if HEADING.match(p):
            started = started or p.split()[0].upper() == "CHAPTER"
            if started and (not out or out[-1]):
                out.append([])
            continue
        if started:
            p = re.sub(r"\s+", " ", p.replace("_", "")).strip()
            out[-1].append(p)
    return [c for c in out if c]


def speech(p):
    """The words spoken in a paragraph that opens with speech, or None."""
    if not p.startswith('"') or p.count('"') % 2:
        return None
    parts = [s.strip() for s in re.findall(r'"([^"]*)"', p) if s.strip()]
    s = " ".join(parts)
    if not (8 <= len(s) <= 700):
        return None
    if s[-1] in ",;:-":
        s = s.rstrip(",;:- ") + "."
    return s


def first_sentence(p):
    """Where a paragraph's first sentence ends (30 to 300 characters in, 80 or more left), or None."""
    for m in re.finditer(r"[.!?]\s+(?=[A-Z])", p):
        if re.search(r"\b(Mr|Mrs|Ms|Dr|St)\.$", p[:m.start() + 1]):
            continue
        end = m.end()
        return end if 30 <= end <= 300 and len(p) - end >= 80 else None
    return None


def build_documents(data: Path, seed: int):
    """-> [(chapter number, "prose" | "dialogue" | "story", text)]: prose documents are plain text (<bos> and
    <eos> are added when they are encoded), chats are rendered whole through the template."""
    rng = random.Random(seed)
    docs = []
    n_chapter = 0
    for name, title in NOVELS.items():
        lines = (data / f"{name}.txt").read_text(encoding="utf-8").split("\n")
        names = [(c, re.compile(r"\b" + re.escape(c).replace(r"\.", r"\.?") + r"\b")) for c in CHARACTERS[name]]
        for ch in chapters(lines):
            n_chapter += 1
            prose, chats, stories = [], [], []
            # prose: consecutive paragraphs up to about 1,400 characters
            doc = []
            for p in ch:
                if doc and sum(len(x) + 2 for x in doc) + len(p) > 1400:
                    prose.append("\n\n".join(doc))
                    doc = []
                doc.append(p)
            if doc:
                prose.append("\n\n".join(doc))
            # dialogue: runs of consecutive speech paragraphs, cut into conversations of 2, 4 or 6 turns
            run = []
            for p in ch + [""]:
                s = speech(p)
                if s:
                    run.append(s)
                    continue
                while len(run) >= 2:
                    k = min(len(run) - len(run) % 2, rng.choice([2, 2, 4, 6]))
                    turns, run = run[:k], run[k:]
                    msgs = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
                    if rng.random() < 0.15:
                        msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
                    chats.append(render_chat(msgs))
                run = []
            # requests answered with a narrative paragraph
            for p in ch:
                if p.startswith('"') or not (200 <= len(p) <= 1500) or p[-1] not in '.!?"':
                    continue
                r = rng.random()
                found = [c for c, rx in names if rx.search(p)]
                if r < 0.35 and found:
                    ask = rng.choice(NAMED_ASKS).format(name=rng.choice(found))
                    answer = p
                elif r < 0.65:
                    cut = first_sentence(p)
                    if '"' in p or not cut:
                        continue
                    ask, answer = f"Continue the story: {p[:cut].strip()}", p[cut:].strip()
                else:
                    ask, answer = rng.choice(STORY_ASKS).format(title=title), p
                msgs = [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
                if rng.random() < 0.15:
                    msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
                stories.append(render_chat(msgs))
            for kind, texts in (("prose", prose), ("dialogue", chats), ("story", stories)):
                docs += [(n_chapter, kind, t) for t in texts]
    return docs


# ----------------------------------------------------------------------------------------------------------
# Tokenizer.

def train_tokenizer(texts, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS)])
    assert tok.get_vocab_size() == vocab, tok.get_vocab_size()
    assert [tok.token_to_id(t) for t in SPECIALS] == list(range(len(SPECIALS)))
    return tok


def save_tokenizer(tok, out: Path, ctx: int, transformers_version: str) -> None:
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "additional_special_tokens": SPECIALS[3:],
        "model_max_length": ctx,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": BOS,
        "eos_token_id": [EOS, END],
        "pad_token_id": PAD,
        "transformers_version": transformers_version,
    }, indent=2) + "\n")


def check_template() -> None:
    """The Jinja template and render_chat() agree (when jinja2 is installed)."""
    try:
        import jinja2
    except ImportError:
        return
    t = jinja2.Environment().from_string(CHAT_TEMPLATE)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do you do?"},
            {"role": "assistant", "content": "Very well."}, {"role": "user", "content": "And Emma?"}]
    for gen in (False, True):
        assert t.render(messages=msgs, bos_token="<bos>", add_generation_prompt=gen) == render_chat(msgs, gen)


def encode_doc(tok, kind, text):
    ids = tok.encode(text, add_special_tokens=False).ids
    return ([BOS] + ids if kind == "prose" else ids) + [EOS]


# ----------------------------------------------------------------------------------------------------------
# Model and training (torch is imported only here, so --prepare and the data checks run without it).

def train(a, tok, train_ids, val_ids):
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np_rng = np.random.default_rng(a.seed)

    cfg = transformers.LlamaConfig(
        vocab_size=a.vocab, hidden_size=256, intermediate_size=704, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, max_position_embeddings=a.ctx, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True, attention_dropout=0.0,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, hidden_act="silu")
    cfg._attn_implementation = "sdpa"
    model = transformers.LlamaForCausalLM(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    # residual and embedding dropout through hooks (the Llama modules have none; nothing of it is saved)
    if a.dropout > 0:
        def drop(m, inputs, out):
            if isinstance(out, tuple):
                return (F.dropout(out[0], a.dropout, m.training),) + tuple(out[1:])
            return F.dropout(out, a.dropout, m.training)
        model.model.embed_tokens.register_forward_hook(drop)
        for layer in model.model.layers:
            layer.self_attn.register_forward_hook(drop)
            layer.mlp.register_forward_hook(drop)

    stream = torch.tensor([t for d in train_ids for t in d], dtype=torch.long, device=device)
    val = torch.tensor([t for d in val_ids for t in d], dtype=torch.long, device=device)
    print(f"model: {n_params / 1e6:.2f} M parameters; train {len(stream)} tokens, val {len(val)} tokens; "
          f"{a.steps} steps of {a.batch} x {a.ctx} tokens = {a.steps * a.batch * a.ctx / len(stream):.1f} epochs; "
          f"device {device}", flush=True)
    # fixed validation windows, evenly spaced
    n_val = min(32 * a.batch, max(1, (len(val) - 1) // a.ctx))
    vstarts = np.linspace(0, len(val) - a.ctx - 1, n_val).astype(np.int64)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    warm = max(1, min(200, a.steps // 10))

    def lr_at(s):
        return a.lr * min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def batch_at(data, starts):
        idx = torch.as_tensor(starts, device=device)[:, None] + torch.arange(a.ctx + 1, device=device)[None, :]
        xy = data[idx]
        return xy[:, :-1], xy[:, 1:]

    def loss_of(x, y):
        with amp:
            logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    t_eval = 0.0

    @torch.no_grad()
    def evaluate():
        nonlocal t_eval
        t = time.time()
        model.eval()
        tot = 0.0
        for i in range(0, len(vstarts), a.batch):
            x, y = batch_at(val, vstarts[i:i + a.batch])
            tot += loss_of(x, y).item() * len(x)
        model.train()
        t_eval += time.time() - t
        return tot / len(vstarts)

    every = max(1, min(250, a.steps // 10))
    best, best_state, best_step, curve = float("inf"), None, -1, []
    ema = None
    t0 = time.time()
    model.train()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x, y = batch_at(stream, np_rng.integers(0, len(stream) - a.ctx - 1, size=a.batch))
        loss = loss_of(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 10 == 0 or step == a.steps - 1:
            ema = loss.item() if ema is None else 0.8 * ema + 0.2 * loss.item()
        if (step + 1) % every == 0 or step == a.steps - 1:
            v = evaluate()
            curve.append((step + 1, ema, v))
            mark = ""
            if v < best:
                best, best_step, mark = v, step + 1, " *"
                best_state = {k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()}
            print(f"step {step + 1:5d}  lr {lr_at(step):.2e}  train {ema:.3f}  val {v:.3f}{mark}  "
                  f"[{time.time() - t0:.0f}s]", flush=True)
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    print(f"trained in {train_s:.0f}s ({(train_s - t_eval) / a.steps * 1000:.0f} ms a step, {t_eval:.0f}s of "
          f"validation); kept step {best_step} "
          f"(val loss {best:.3f}, perplexity {math.exp(best):.1f})")
    print("loss curve (step, train, val):")
    for s, tr, v in curve:
        print(f"  {s:5d} {tr:.3f} {v:.3f} " + "#" * max(1, int(round((v - 1.5) * 12))))
    return model, cfg, curve, train_s


def save_and_sample(a, tok, model, cfg) -> None:
    import torch
    import transformers

    out = a.out
    if out.exists():
        for f in out.iterdir():
            if f.is_file():
                f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu", dtype=torch.bfloat16)
    model.config._attn_implementation = "eager"
    model.save_pretrained(str(out))
    save_tokenizer(tok, out, a.ctx, transformers.__version__)
    for f in out.iterdir():  # only what examples/demo holds
        if f.name not in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                          "generation_config.json"):
            f.unlink()
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB): {', '.join(sorted(f.name for f in out.iterdir()))}")

    # samples from the checkpoint as written, through transformers (float32 compute)
    ft = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    m = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    gen = dict(max_new_tokens=80, do_sample=True, temperature=0.7, top_k=40, top_p=0.95)
    torch.manual_seed(a.seed)
    with torch.no_grad():
        for prompt in ("The lighthouse", "It was a fine morning", "Mr. Darcy", "She had never"):
            ids = torch.tensor([ft.encode(prompt)])
            g = m.generate(ids, **gen)
            print(f"--- {prompt!r}\n{ft.decode(g[0], skip_special_tokens=True)}")
        for q in ("How do you do?", "Tell me a story about Emma.", "What do you think of the weather?",
                  "Continue the story: The rain had not stopped all day."):
            msgs = [{"role": "user", "content": q}]
            ids = ft.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            ids = ids["input_ids"]
            assert ids[0].tolist() == tok.encode(render_chat(msgs, True), add_special_tokens=False).ids
            g = m.generate(ids, **gen)
            print(f"--- chat: {q}\n{ft.decode(g[0, ids.shape[1]:], skip_special_tokens=True)}")


# ----------------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the prepared text (see --prepare)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--prepare", action="store_true", help="fetch the novels into --data and stop")
    ap.add_argument("--check-data", action="store_true",
                    help="build the tokenizer and the training documents, print statistics and examples, stop")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda where there is one")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    a = ap.parse_args()
    t0 = time.time()

    if a.prepare:
        prepare(a.data)
        return
    if not all((a.data / f"{n}.txt").exists() for n in NOVELS):
        sys.exit(f"{a.data} lacks the novels: run `python3 {Path(__file__).relative_to(REPO)} --prepare` first "
                 f"(on a Debian machine; carry the folder to one without apt)")
    check_template()

    docs = build_documents(a.data, a.seed)
    tok = train_tokenizer([t for _, _, t in docs], a.vocab)
    ids = [encode_doc(tok, kind, t) for _, kind, t in docs]
    random.Random(a.seed).shuffle(order := list(range(len(docs))))
    # whole chapters are held out (a chapter's paragraphs appear in its prose and in its chats)
    train_ids = [ids[i] for i in order if docs[i][0] % HOLD_OUT]
    val_ids = [ids[i] for i in order if not docs[i][0] % HOLD_OUT]
    chars = sum((a.data / f"{n}.txt").stat().st_size for n in NOVELS)
    counts = {k: (sum(1 for d in docs if d[1] == k), sum(len(i) for i, d in zip(ids, docs) if d[1] == k))
              for k in ("prose", "dialogue", "story")}
    print(f"data: {chars / 1e6:.2f} MB of text, {docs[-1][0]} chapters; documents (tokens): "
          + ", ".join(f"{k} {n} ({t})" for k, (n, t) in counts.items())
          + f"; train {sum(map(len, train_ids))} tokens, validation {sum(map(len, val_ids))} tokens "
          f"(every {HOLD_OUT}th chapter); tokenizer {a.vocab} tokens, "
          f"{chars / counts['prose'][1]:.2f} characters a prose token; sha256 of the token ids "
          f"{hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]} [{time.time() - t0:.0f}s]")
    if a.check_data:
        rng = random.Random(1)
        for k, n in (("prose", 2), ("dialogue", 3), ("story", 4)):
            for _, _, t in rng.sample([d for d in docs if d[1] == k], n):
                print("=" * 40 + "\n" + t)
        ex = render_chat([{"role": "user", "content": "How do you do?"}], True)
        print("=" * 40 + f"\n{ex!r} -> {tok.encode(ex, add_special_tokens=False).ids}")
        print(f"'The lighthouse' -> {tok.encode('The lighthouse').ids}")
        return

    if a.device is None:
        import torch
        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg, curve, train_s = train(a, tok, train_ids, val_ids)
    save_and_sample(a, tok, model, cfg)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
