"""Fill-mask: a tiny BERT pretrained by masked language modelling, then asked for the hidden word.

Mirrors the seeds' masked-language-model objective (BERT hides 15% of the tokens and learns to predict
them from both sides) and the fill-mask pipeline that reads it back. No installed offline model has a
masked-LM head (all-MiniLM-L6-v2 was trained for sentence embeddings and ships without one), so this
script pretrains one: `lmforge.pretrain` with objective "mlm" trains a 0.22M-parameter `bert-tiny` on a
small corpus of facts it writes (capitals, languages, animals), with a vocabulary of its words, then
`lmforge.fill_mask` ranks that vocabulary at each [MASK]. Quality is toy-level: the model has memorised
23 facts, it has not learned English.

    python examples/fill_mask.py [--fast]    # --fast: 300 steps instead of 2,000
"""

import argparse
import random
import tempfile
from pathlib import Path

import torch

import lmforge

CAPITALS = {"france": ("paris", "french"), "germany": ("berlin", "german"), "spain": ("madrid", "spanish"),
            "italy": ("rome", "italian"), "japan": ("tokyo", "japanese"), "greece": ("athens", "greek")}  # fmt: skip
ANIMALS = {"cat": "meows", "dog": "barks", "cow": "moos", "duck": "quacks", "lion": "roars"}
TEMPLATES = ["{city} is the capital of {country}.", "the capital of {country} is {city}.",
             "people in {country} speak {language}."]  # fmt: skip
QUESTIONS = ["paris is the [MASK] of france.", "the capital of japan is [MASK].",
             "people in spain speak [MASK].", "the dog [MASK] at night."]  # fmt: skip


def write_corpus(folder: Path, n_lines: int = 2000) -> None:
    """folder/facts.txt, and folder/vocab.txt: BERT's special tokens, then every word of it, one token each."""
    rng = random.Random(0)
    facts = [
        t.format(city=c, country=k, language=lang) for k, (c, lang) in CAPITALS.items() for t in TEMPLATES
    ]
    facts += [f"the {a} {s} at night." for a, s in ANIMALS.items()]
    (folder / "facts.txt").write_text("\n".join(rng.choice(facts) for _ in range(n_lines)) + "\n")
    # NOTE: a word list, not a trained WordPiece: the `tokenizers` WordPiece trainer numbers its "##"
    # pieces in hash-map order, so two runs on this corpus gave two vocabularies (huggingface/tokenizers#1794).
    words = sorted({w for fact in facts for w in fact.replace(".", " .").split()})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join([*specials, *words]) + "\n")
    (folder / "special_tokens_map.json").write_text('{"eos_token": "[SEP]"}')  # it ends each document


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="pretrain 300 steps instead of 2,000")
    args = parser.parse_args()
    steps = 300 if args.fast else 2000
    # One thread: a 64-wide model's matrices are too small to split. On a 2-core machine shared with other
    # jobs a step took 58 ms on one thread and 144 ms on two (a 1,200-step run: 1.5 minutes against 6.6).
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(Path(tmp))
        config = lmforge.PretrainConfig(
            data=[str(Path(tmp) / "facts.txt")], objective="mlm", preset="bert-tiny", tokenizer=tmp,
            out=str(Path(tmp) / "run"), max_steps=steps, seq_len=32, batch_size=32, lr=3e-3, warmup_steps=30,
            dropout=0.0, eval_every=steps // 4, sample_tokens=0, seed=0, progress=False, precision="float32",
        )  # fmt: skip
        # dropout 0: the point is to memorise these facts fast, not to generalise beyond them.
        lmforge.pretrain(config)
        model, tok = lmforge.load_model(config.out), lmforge.load_tokenizer(config.out)
    for text in QUESTIONS:
        candidates = lmforge.fill_mask(model, tok, text, top_k=3)
        best = ", ".join(f"{c['token_str']} {c['score']:.2f}" for c in candidates)
        print(f"{text:<36} -> {best}")


if __name__ == "__main__":
    main()


# Expected output (full run, on a 2-core AMD EPYC CPU with bf16, torch 2.13 CPU; run-to-run only the
# timings and the measured bf16 speed-up change):
#   model: bert-tiny (d_model 64, 4 layers, 4 heads, 0.22M parameters), objective: mlm, data: 12,934 training tokens from /tmp/tmpXXXXXXXX/run/data
#   precision: float32 (asked for)
#   (the legend of the columns: train loss, val loss, ...)
#   step 500/2,000  train loss 2.2997  val loss 0.6382  perplexity 1.9  0:21 elapsed
#   step 1,000/2,000  train loss 0.6762  val loss 0.3835  perplexity 1.5  0:44 elapsed
#   step 1,500/2,000  train loss 0.2847  val loss 0.1562  perplexity 1.2  1:07 elapsed
#   step 2,000/2,000  train loss 0.1722  val loss 0.1369  perplexity 1.1  1:28 elapsed
#   paris is the [MASK] of france.       -> capital 1.00, cow 0.00, at 0.00
#   the capital of japan is [MASK].      -> tokyo 0.98, madrid 0.01, berlin 0.00
#   people in spain speak [MASK].        -> spanish 0.98, madrid 0.01, greek 0.01
#   the dog [MASK] at night.             -> barks 0.97, meows 0.02, moos 0.01
