"""Sentiment analysis: fine-tune a pretrained encoder to classify reviews as positive or negative.

Mirrors the seed's BertForSequenceClassification example (process_data, train_model, evaluate_model):
here the encoder is the real all-MiniLM-L6-v2 (a 6-layer BERT), the labelled set is the 40 reviews of
examples/data/sentiment/train.csv (16 more held out in validation.csv), and `lmforge.finetune` runs the
training loop (every weight trains, plus a new classification head on the [CLS] token). Then the
fine-tuned model classifies new sentences, as the seed's evaluate_model: logits -> softmax -> argmax.

    python examples/sentiment.py           # 6 epochs (30 steps)
    python examples/sentiment.py --fast    # 10 steps (what tests/test_examples.py runs)
"""

import argparse
import tempfile
from pathlib import Path

import torch

import lmforge

DATA = Path(__file__).parent / "data" / "sentiment"
SENTENCES = [
    "I love this movie, it was wonderful!",
    "The food was cold and the waiter was rude.",
    "What a delightful surprise, highly recommended.",
    "This was a complete waste of my time.",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="train 10 steps instead of 6 epochs")
    parser.add_argument("--model", default="all-minilm-l6-v2", help="a BERT checkpoint or short name")
    args = parser.parse_args()
    length = {"max_steps": 10} if args.fast else {"epochs": 6}
    with tempfile.TemporaryDirectory() as out:
        config = lmforge.FinetuneConfig(
            task="classification", model=args.model, data=str(DATA), out=out, method="full",
            lr=3e-4, batch_size=8, warmup_steps=1, eval_every=5, max_length=64, seed=0, progress=False,
            **length,
        )  # fmt: skip
        # NOTE: LoRA (method="lora") trains 0.3% of the weights and stayed at chance for 12 steps here;
        # a full fine-tune at 3e-4 reaches 1.0 held-out accuracy in 8.
        metrics = lmforge.finetune(config)  # the fine-tuned model and metrics.json go to out/
        print(f"held-out accuracy: {metrics['accuracy']:.2f} on 16 reviews it never trained on")
        model, tok = lmforge.load_model(out), lmforge.load_tokenizer(out)
    batch = tok.encode_inputs(SENTENCES, return_tensors="pt")  # input_ids, token_type_ids, attention_mask
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    probs = logits.softmax(-1)  # (4, 2): one probability per label
    for text, row in zip(SENTENCES, probs):
        label = model.labels.id2label[int(row.argmax())]
        print(f"{label:>8} {row.max():.2f}  {text}")


if __name__ == "__main__":
    main()


# Expected output (full run, on a 2-core AMD EPYC CPU with bf16, torch 2.13 CPU; run-to-run only the
# timings and the measured bf16 speed-up change):
#   fine-tuning all-minilm-l6-v2 (22.71M parameters) for classification on 40 examples, 2 labels (negative, positive); validating on 16
#   training for 30 steps (6 epochs of 40 rows, 8 a step); peak learning rate 0.0003
#   precision: bfloat16 (bf16 measured 4.14x float32 on this CPU)
#   (the legend of the columns: train loss, val loss, ...)
#   step 5/30  train loss 0.7080  val loss 0.5952  accuracy 1  macro_f1 1  0:00 elapsed
#   step 10/30  train loss 0.4652  val loss 0.1611  accuracy 1  macro_f1 1  0:01 elapsed
#   step 15/30  train loss 0.0977  val loss 0.0253  accuracy 1  macro_f1 1  0:02 elapsed
#   step 20/30  train loss 0.0189  val loss 0.0085  accuracy 1  macro_f1 1  0:02 elapsed
#   step 25/30  train loss 0.0085  val loss 0.0054  accuracy 1  macro_f1 1  0:03 elapsed
#   step 30/30  train loss 0.0062  val loss 0.0045  accuracy 1  macro_f1 1  0:03 elapsed
#   held-out accuracy: 1.00 on 16 reviews it never trained on
#   positive 1.00  I love this movie, it was wonderful!
#   negative 1.00  The food was cold and the waiter was rude.
#   positive 1.00  What a delightful surprise, highly recommended.
#   negative 1.00  This was a complete waste of my time.
