"""A dialogue system: a multi-turn chat with an instruction-tuned model, each reply seeing the whole conversation.

Mirrors the seeds' dialogue-system application (an assistant that understands the user's question and
answers it), on the real SmolLM2-135M-Instruct. `ChatSession` keeps the messages (a system message, then
user and assistant turns), writes them with the model's chat template (<|im_start|>user ... <|im_end|>)
and streams each reply; the follow-ups ("And of Germany?") only make sense with the first question in
the context. When the conversation outgrows the model's context the oldest turns are dropped.
Greedy decoding (temperature 0) makes the replies the same on every run on the same machine.

    python examples/chat.py [--fast]    # --fast: two turns of at most 24 tokens
    lmforge chat --model smollm2        # the same session in the terminal, typed by you
"""

import argparse

import lmforge
from lmforge.inference.chat import ChatSession

TURNS = [
    "What is the capital of France?",
    "And of Germany?",
    "And of Italy?",  # NOTE: "Name one famous building in that city." got "The capital of Germany is Berlin."
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="two turns of at most 24 tokens")
    parser.add_argument("--model", default="smollm2", help="a chat model: checkpoint, .gguf or short name")
    args = parser.parse_args()
    model, tok = lmforge.load_model(args.model), lmforge.load_tokenizer(args.model)
    config = lmforge.GenerationConfig(temperature=0.0, max_new_tokens=24 if args.fast else 96)
    # NOTE: no system message of our own: the template then adds SmolLM2's ("You are a helpful AI
    # assistant named SmolLM, ..."). With "You are a concise, helpful assistant." this 135M model
    # answered the first question with a French phrase repeated until max_new_tokens.
    session = ChatSession(model, tok, config)
    for text in TURNS[:2] if args.fast else TURNS:
        print(f"user: {text}")
        print("assistant: ", end="", flush=True)
        for piece in session.reply(text):  # a stream of text pieces, as `lmforge chat` prints them
            print(piece, end="", flush=True)
        print()
    n_tokens = len(session.prompt_ids())  # the conversation as the model will see it next turn
    print(f"({len(session.turns)} messages so far, {n_tokens} tokens with the template)")


if __name__ == "__main__":
    main()


# Expected output (full run, on a 2-core AMD EPYC CPU with bf16, torch 2.13 CPU; run-to-run only the
# timings and the measured bf16 speed-up change):
#   user: What is the capital of France?
#   assistant: The capital of France is Paris.
#   user: And of Germany?
#   assistant: The capital of Germany is Berlin.
#   user: And of Italy?
#   assistant: The capital of Italy is Rome.
#   (6 messages so far, 94 tokens with the template)
