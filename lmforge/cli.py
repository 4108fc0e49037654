"""The `lmforge` command: one subcommand per user verb.

Every failure a user can cause (a bad path, a corrupt checkpoint, an out-of-range option) prints
one line naming the problem and exits with code 2; there is never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import sys
import time

from lmforge import config as cfg
from lmforge.errors import LmforgeError


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem, and where help is), exit code 2."""

    def error(self, message: str):
        raise LmforgeError(f"{message} (see `{self.prog} --help`)")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16, or auto")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")


def cmd_generate(args) -> None:
    import lmforge
    from lmforge.device import default_device, resolve_dtype
    from lmforge.inference import GenerationConfig

    recipe = cfg.load_recipe(args.config) if args.config else None
    gen = cfg.build(GenerationConfig, args, recipe)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt:
        raise LmforgeError("empty prompt; pass --prompt TEXT (or --prompt - to read it from standard input)")
    device = args.device or default_device()
    model = lmforge.load_model(args.model, dtype=resolve_dtype(args.dtype, device), device=device)
    tok = lmforge.load_tokenizer(args.model)
    start, n_tokens = time.perf_counter(), 0
    if args.stream:
        for piece in lmforge.generate(model, tok, prompt, gen, stream=True):
            print(piece, end="", flush=True)
        print()
    else:
        text = lmforge.generate(model, tok, prompt, gen)
        print(text)
        n_tokens = len(tok.encode(text, add_special_tokens=False))
    if args.bench:
        elapsed = time.perf_counter() - start
        n_tokens = n_tokens or gen.max_new_tokens
        print(
            f"[bench] {n_tokens} tokens in {elapsed:.2f} s: {n_tokens / elapsed:.1f} tokens/s "
            f"({model.dtype}, {device})",
            file=sys.stderr,
        )


def cmd_tokenizer_train(args) -> None:
    from lmforge.data.sources import builtin_corpus_files, expand_paths
    from lmforge.tokenizers import train_tokenizer

    files = expand_paths(args.data, args.glob) if args.data else builtin_corpus_files()
    tok = train_tokenizer(files, vocab_size=args.vocab_size, kind=args.kind)
    tok.save_pretrained(args.out)
    print(f"trained a {args.kind} tokenizer with {tok.vocab_size} tokens on {len(files)} files -> {args.out}")


def cmd_prepare(args) -> None:
    from lmforge.data.prepare import PrepareConfig, prepare

    config = cfg.build(PrepareConfig, args, cfg.load_recipe(args.config) if args.config else None)
    manifest = prepare(config)
    print(
        f"wrote {manifest['train_tokens']:,} training and {manifest['val_tokens']:,} validation tokens "
        f"({manifest['dtype']}) to {config.out}"
    )


def cmd_pretrain(args) -> None:
    from lmforge.train.pretrain import PretrainConfig, pretrain

    config = cfg.build(PretrainConfig, args, cfg.load_recipe(args.config) if args.config else None)
    row = pretrain(config)
    if row:
        summary = f"loss {row['loss']:.4f}" + (
            f", validation loss {row['val_loss']:.4f}" if "val_loss" in row else ""
        )
        print(f"finished at step {row['step']}: {summary}; model in {config.out}")
    else:
        print(
            f"{config.out} has already trained to step {config.max_steps}; raise --max-steps to train further"
        )


def build_parser() -> ArgumentParser:
    from lmforge.inference import GenerationConfig

    parser = ArgumentParser(prog="lmforge", description="Transformer language models from first principles.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=ArgumentParser, metavar="VERB")

    p = verbs.add_parser("generate", help="continue a prompt with a model")
    p.add_argument("--model", required=True, help="checkpoint directory (lmforge or Hugging Face)")
    p.add_argument("--prompt", required=True, help="the text to continue ('-' reads standard input)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--bench", action="store_true", help="print decoding speed (tokens/s) to standard error")
    p.add_argument("--config", help="a TOML or YAML recipe with generation settings")
    cfg.add_arguments(p, GenerationConfig)
    _add_runtime_flags(p)
    p.set_defaults(func=cmd_generate)

    from lmforge.data.prepare import PrepareConfig
    from lmforge.train.pretrain import PretrainConfig

    p = verbs.add_parser("prepare", help="tokenize a corpus into token files for pretraining")
    p.add_argument("--config", help="a TOML or YAML recipe")
    cfg.add_arguments(p, PrepareConfig)
    p.set_defaults(func=cmd_prepare)

    p = verbs.add_parser("pretrain", help="train a language model from scratch")
    p.add_argument("--config", help="a TOML or YAML recipe; flags override its keys")
    cfg.add_arguments(
        p,
        PretrainConfig,
        help={
            "data": "files, directories or a prepared directory (default: the built-in corpus)",
        },
    )
    p.set_defaults(func=cmd_pretrain)

    tok = verbs.add_parser("tokenizer", help="train a tokenizer").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser, metavar="ACTION"
    )
    p = tok.add_parser("train", help="train a byte-level BPE or character tokenizer on text files")
    p.add_argument("--data", nargs="+", help="text files or directories (default: the built-in corpus)")
    p.add_argument("--glob", default="*.txt", help="which files to take from directories (default: *.txt)")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--kind", choices=["bpe", "char"], default="bpe")
    p.add_argument("--out", required=True, help="directory for tokenizer.json and its config")
    p.set_defaults(func=cmd_tokenizer_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.func(args)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
