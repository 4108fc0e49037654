"""Feature extraction: a BERT encoder's hidden states, pooled into sentence embeddings for semantic matching.

Mirrors the seed's `BertModel(...)(input_ids)[0]` example (the last hidden states of "This is an example
sentence."), on the real all-MiniLM-L6-v2, a 6-layer BERT trained for sentence similarity. It shows:
1. the last hidden states: one 384-dimensional vector per token, [CLS] and [SEP] included;
2. `lmforge.embed`: those vectors mean-pooled over the real tokens and scaled to unit length, one per
   sentence, so that the dot product of two is their cosine similarity;
3. semantic search: the sentence nearest to a query, though the two share almost no words.

    python examples/features.py [--fast]     # --fast: the same, with fewer sentences
"""

import argparse

import torch

import lmforge

SENTENCES = [
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "The new movie is awesome.",
    "The cat sleeps on the sofa all afternoon.",
    "Stock markets fell sharply on Monday.",
    "Two children are playing football in the park.",
]
QUERY = "Someone is having a meal."


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="match against the first four sentences only")
    parser.add_argument("--model", default="all-minilm-l6-v2", help="a BERT checkpoint or short name")
    args = parser.parse_args()
    sentences = SENTENCES[:4] if args.fast else SENTENCES
    model, tok = lmforge.load_model(args.model), lmforge.load_tokenizer(args.model)

    # 1. The seed's example: token ids in, the last layer's hidden states out.
    input_ids = torch.tensor([tok.encode("This is an example sentence.")])  # (1, T), [CLS] ... [SEP]
    with torch.no_grad():
        hidden = model.hidden(input_ids)  # (1, T, d_model)
    tokens = [tok.id_to_token(i) for i in input_ids[0].tolist()]
    print(f"last hidden states: {tuple(hidden.shape)} for the tokens {tokens}")

    # 2. Sentence embeddings: (n, 384), unit length, so vectors @ vectors.T is the cosine similarity.
    vectors = lmforge.embed(model, tok, [QUERY, *sentences])
    scores = vectors[1:] @ vectors[0]  # (n,): each sentence's cosine similarity to the query
    print(f"\nquery: {QUERY}")
    for score, sentence in sorted(zip(scores.tolist(), sentences), reverse=True):
        print(f"  {score:+.3f}  {sentence}")
    print(f"nearest: {sentences[int(scores.argmax())]}")


if __name__ == "__main__":
    main()


# Expected output (full run, on a 2-core AMD EPYC CPU with bf16, torch 2.13 CPU; run-to-run only the
# timings and the measured bf16 speed-up change):
#   last hidden states: (1, 8, 384) for the tokens ['[CLS]', 'this', 'is', 'an', 'example', 'sentence', '.', '[SEP]']
#
#   query: Someone is having a meal.
#     +0.580  A man is eating a piece of bread.
#     +0.041  A man is riding a horse.
#     -0.019  The cat sleeps on the sofa all afternoon.
#     -0.025  The new movie is awesome.
#     -0.057  Stock markets fell sharply on Monday.
#     -0.092  Two children are playing football in the park.
#   nearest: A man is eating a piece of bread.
