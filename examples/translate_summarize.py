"""Translation and summarisation with one encoder-decoder (T5), told apart by a prefix on the input.

Mirrors the seed's T5 example (`"translate English to German: Hello, world!"` -> "Hallo Welt!"). No
pretrained T5 is offline, so this script makes one in under a minute: a byte-level BPE tokenizer and a
randomly initialised 0.35M-parameter `t5-tiny`, fine-tuned by `lmforge.finetune` (task "seq2seq") on a
toy set it writes: English -> French ("the red cat sleeps" -> "le chat rouge dort") and sentence -> its
core ("summarize: yesterday, near the river, the red cat sleeps quietly." -> "the red cat sleeps.").
The encoder reads the source once; the decoder writes the target token by token, attending to it.
Quality is toy-level at this budget: it learns these templates and words, nothing of real French or of
real summaries; a sentence held out of training shows it learned the pattern, not a list.

    python examples/translate_summarize.py [--fast]    # --fast: 80 steps instead of 200
"""

import argparse
import json
import random
import tempfile
from pathlib import Path

import torch

import lmforge

ADJ = {"red": "rouge", "green": "vert", "black": "noir", "white": "blanc", "small": "petit"}
NOUN = {"cat": "chat", "dog": "chien", "car": "voiture", "bird": "oiseau", "horse": "cheval"}
VERB = {"sleeps": "dort", "runs": "court", "waits": "attend", "sings": "chante"}
WHEN = ["yesterday", "this morning", "at night", "every sunday", "after the rain"]
WHERE = ["near the river", "in the old house", "behind the school", "on the hill", "in the park"]
HOW = ["quietly", "for a long time", "again", "happily", "all day"]
HELD_OUT = "the black horse sings"  # never in the training data, in either task


def pairs(rng: random.Random, n: int) -> list[dict]:
    rows = []
    while len(rows) < n:
        a, o, v = (rng.choice(list(words)) for words in (ADJ, NOUN, VERB))
        core = f"the {a} {o} {v}"
        if core == HELD_OUT:
            continue
        if rng.random() < 0.5:
            french = f"le {NOUN[o]} {ADJ[a]} {VERB[v]}"  # the adjective after the noun
            rows.append({"source": f"translate English to French: {core}", "target": french})
        else:
            source = f"summarize: {rng.choice(WHEN)}, {rng.choice(WHERE)}, {core} {rng.choice(HOW)}."
            rows.append({"source": source, "target": f"{core}."})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="train 80 steps instead of 200")
    args = parser.parse_args()
    rng = random.Random(0)
    torch.set_num_threads(1)  # a 0.35M model's matrices are too small to split (see fill_mask.py)
    train, validation = pairs(rng, 600), pairs(rng, 40)
    with tempfile.TemporaryDirectory() as tmp:
        base, data = Path(tmp) / "base", Path(tmp) / "data"
        data.mkdir()
        for name, rows in (("train", train), ("validation", validation)):
            (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        # T5's special ids: <pad> 0 (also the decoder's start token), </s> 1 (end of text), <unk> 2.
        texts = [r["source"] + " " + r["target"] for r in train]
        tok = lmforge.train_tokenizer(iter(texts), vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"])
        torch.manual_seed(0)
        lmforge.build_model(
            lmforge.get_preset("t5-tiny", vocab_size=tok.vocab_size, max_seq_len=64)
        ).save_pretrained(base)
        tok.save_pretrained(base)
        config = lmforge.FinetuneConfig(
            task="seq2seq", model=str(base), data=str(data), out=str(Path(tmp) / "run"), lr=3e-3, batch_size=16,
            max_steps=80 if args.fast else 200, warmup_steps=10, eval_every=50, max_length=48, max_target_length=16,
            seed=0, progress=False, precision="float32",
        )  # fmt: skip
        metrics = lmforge.finetune(config)
        print(
            f"validation ROUGE-L {metrics['rougeL']:.2f}, BLEU {metrics['bleu']:.1f} (most of its sentences occur in training)"
        )
        model, tok = lmforge.load_model(config.out), lmforge.load_tokenizer(config.out)
    for source in [f"translate English to French: {HELD_OUT}",
                   "summarize: every sunday, on the hill, the white dog runs happily.",
                   "summarize: at night, behind the school, the black horse sings again."]:  # fmt: skip
        print(f"{source}\n  -> {lmforge.generate(model, tok, source, max_new_tokens=16, temperature=0)}")


if __name__ == "__main__":
    main()


# Expected output (full run, on a 2-core AMD EPYC CPU with bf16, torch 2.13 CPU; run-to-run only the
# timings and the measured bf16 speed-up change):
#   fine-tuning /tmp/tmpXXXXXXXX/base (0.35M parameters) for seq2seq on 600 source/target pairs; validating on 40 (greedy decoding)
#   training for 200 steps; peak learning rate 0.003
#   precision: float32 (asked for)
#   (the legend of the columns: train loss, val loss, ...)
#   step 50/200  train loss 1.3240  val loss 0.0328  perplexity 1.0  bleu 98.02  rouge1 0.9938  rouge2 0.9833  rougeL 0.9938  0:01 elapsed
#   step 100/200  train loss 0.0079  val loss 0.0024  perplexity 1.0  bleu 100  rouge1 1  rouge2 1  rougeL 1  0:02 elapsed
#   step 150/200  train loss 0.0017  val loss 0.0013  perplexity 1.0  bleu 100  rouge1 1  rouge2 1  rougeL 1  0:04 elapsed
#   step 200/200  train loss 0.0010  val loss 0.0008  perplexity 1.0  bleu 100  rouge1 1  rouge2 1  rougeL 1  0:05 elapsed
#   validation ROUGE-L 1.00, BLEU 100.0 (most of its sentences occur in training)
#   translate English to French: the black horse sings
#     -> le cheval noir chante
#   summarize: every sunday, on the hill, the white dog runs happily.
#     -> the white dog runs.
#   summarize: at night, behind the school, the black horse sings again.
#     -> the black horse sings.
