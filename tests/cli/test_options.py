"""Every option of every command, as a flag or a recipe key: a value of the wrong type or out of its
range is one line on standard error, `lmforge: error: ...` naming the option, and exit code 2, never a
traceback, and it is refused before any model or data is loaded.

The commands and their options are read from the parser itself, and the bad values are drawn by
hypothesis from each option's declared range (lmforge.config.bounded), so a new option is covered
as soon as it exists, and a numeric option without a declared range fails here.
"""

import argparse
import contextlib
import dataclasses
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lmforge_cli import assert_one_line_error, run_lmforge

from lmforge import cli
from lmforge import config as cfg
from lmforge.data.prepare import PrepareConfig
from lmforge.errors import LmforgeError
from lmforge.inference import GenerationConfig
from lmforge.models import build_model
from lmforge.models.presets import get_preset
from lmforge.tokenizers import train_tokenizer
from lmforge.train.finetune import FinetuneConfig
from lmforge.train.pretrain import PretrainConfig


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) of every command that runs something (`tokenizer train`, not `tokenizer`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*prefix, name))
    if parser.get_default("func") is not None:
        yield prefix, parser


COMMANDS = dict(_commands(cli.build_parser()))
# Every option that converts its text (a str option takes any text); the flag and its `type`.
TYPED = [
    (prefix, action)
    for prefix, parser in COMMANDS.items()
    for action in parser._actions
    if action.option_strings and action.type not in (None, str)
]


def _run(argv: list[str]) -> tuple[int, str]:
    """lmforge.cli.main in this process: (exit code, standard error). Any traceback fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, err.getvalue()


def _assert_one_line(code: int, stderr: str, *needles: str) -> str:
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmforge: error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _required_args(parser: argparse.ArgumentParser) -> list[str]:
    """Values for a command's required flags: any text, a valid number for a numeric one."""
    args = []
    for action in parser._actions:
        if action.required and action.option_strings:
            numeric = isinstance(action.type, cfg.NumberOption)
            args += [action.option_strings[0], _a_valid_number(action.type.limits) if numeric else "x"]
    return args


def _a_valid_number(limits: cfg.Range) -> str:
    low = limits.ge if limits.ge is not None else (limits.gt + 1 if limits.gt is not None else 1)
    return str(math.ceil(low))


def _parses(text: str, kind) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _outside(kind, limits: cfg.Range) -> list:
    """Strategies for numbers of `kind` outside `limits` (NaN and the infinities are outside every float
    range)."""
    ge, gt, le, lt = limits.ge, limits.gt, limits.le, limits.lt
    if kind is int:
        return [
            *([st.integers(max_value=math.ceil(ge) - 1)] if ge is not None else []),
            *([st.integers(max_value=math.floor(gt))] if gt is not None else []),
            *([st.integers(min_value=math.floor(le) + 1)] if le is not None else []),
            *([st.integers(min_value=math.ceil(lt))] if lt is not None else []),
        ]
    return [
        *([st.floats(max_value=ge, exclude_max=True)] if ge is not None else []),
        *([st.floats(max_value=gt)] if gt is not None else []),
        *([st.floats(min_value=le, exclude_min=True)] if le is not None else []),
        *([st.floats(min_value=lt)] if lt is not None else []),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    ]


def _bad_text(option: cfg.NumberOption):
    """Flag text that is not a number of the option's kind, or is one outside its range."""
    kind = option.kind
    wrong = [
        st.sampled_from(["", "abc", "ten", "1.2.3", "0x10", "1e3" if kind is int else "1e999"]),
        # NOTE: argparse drops a value that is exactly "--" (its end-of-options marker)
        st.text(max_size=8).filter(lambda t: t != "--" and not _parses(t, kind)),
    ]
    if kind is int:
        wrong.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()))
    return st.one_of(*wrong, *_outside(kind, option.limits)).map(str)


def test_the_commands_are_all_found():
    names = {" ".join(prefix) for prefix in COMMANDS}
    expected = {"generate", "prepare", "pretrain", "finetune", "evaluate", "tokenizer train"}
    assert expected | {"classify", "answer", "embed", "search", "merge-lora"} <= names


@pytest.mark.parametrize(
    ("prefix", "action"), TYPED, ids=[f"{' '.join(p)} {a.option_strings[0]}" for p, a in TYPED]
)
def test_every_numeric_option_declares_its_range(prefix, action):
    """A numeric flag parses through cfg.NumberOption (its range beside its config field, or given
    to cfg.number_flag); a plain `type=int` would let any value through to the command."""
    assert isinstance(action.type, cfg.NumberOption), f"{' '.join(prefix)} {action.option_strings[0]}"


@pytest.mark.parametrize(
    ("prefix", "action"), TYPED, ids=[f"{' '.join(p)} {a.option_strings[0]}" for p, a in TYPED]
)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_a_bad_flag_value_is_one_line_naming_the_flag(prefix, action, data):
    flag = action.option_strings[0]
    text = data.draw(_bad_text(action.type), label=flag)
    argv = [*prefix, *_required_args(COMMANDS[prefix]), f"{flag}={text}"]
    _assert_one_line(*_run(argv), flag)


# --- recipe keys and Python arguments: the same checks, from the config dataclasses ----------------

# Each command's config, with what it needs besides the key under test.
CONFIGS = {GenerationConfig: {}, PrepareConfig: {}, PretrainConfig: {}, FinetuneConfig: {"model": "m"}}
FIELDS = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls) if f.init]


def _wrong_value(kind, is_list: bool):
    """A recipe value of the wrong type for a field of `kind` (TOML and YAML give all of these)."""
    texts, numbers = st.text(max_size=5), st.integers() | st.floats()
    if is_list:
        return numbers | st.booleans() | st.lists(numbers | st.booleans(), min_size=1, max_size=3)
    return {
        int: texts | st.booleans() | st.floats().filter(lambda x: not x.is_integer()) | st.just([1]),
        float: texts | st.booleans() | st.just([0.5]),
        str: numbers | st.booleans() | st.just(["a"]),
        bool: texts | numbers | st.just([True]),
    }[kind]


@pytest.mark.parametrize(("cls", "name"), FIELDS, ids=[f"{c.__name__}.{n}" for c, n in FIELDS])
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_a_bad_recipe_value_is_one_line_naming_the_key(cls, name, data):
    kind, is_list, _ = cfg._field_types(cls)[name]
    limits = cfg.field_ranges(cls).get(name)
    bad = _wrong_value(kind, is_list)
    if limits is not None and not is_list:
        bad = st.one_of(bad, *_outside(kind, limits))
    value = data.draw(bad, label=name)
    with pytest.raises(LmforgeError, match=rf"\(recipe key {name}\) must be") as info:
        cfg.build(cls, None, {**CONFIGS[cls], name: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("recipe", "needles"),
    [
        ('lr = "fast"', ["--lr", "a finite number > 0", "the string 'fast'"]),
        ("max_steps = 1.5", ["max_steps", "an integer", "got 1.5"]),
        ('max_steps = "10"', ["max_steps", "the string '10'"]),
        ("max_steps = true", ["max_steps", "got True"]),
        ("keep_last = 0", ["keep_last", "[1, 2**63)", "got 0"]),
        ("grad_clip = -1.0", ["grad_clip", "got -1.0"]),
        ("seed = -1", ["seed", "[0, 2**63)"]),
        ("data = [1, 2]", ["data", "a list of strings"]),
        ('compile = "yes"', ["compile", "true or false"]),
    ],
)
def test_a_recipe_with_a_bad_value_stops_before_any_work(tmp_path, recipe, needles):
    (tmp_path / "recipe.toml").write_text(recipe + "\n")
    out = tmp_path / "run"
    _assert_one_line(*_run(["pretrain", "--config", tmp_path / "recipe.toml", "--out", out]), *needles)
    assert not out.exists()


def test_a_generation_recipe_is_checked_too(tmp_path):
    (tmp_path / "gen.toml").write_text("num_beams = 1000000\n")
    argv = ["generate", "--model", tmp_path / "no-model", "--prompt", "hi", "--config", tmp_path / "gen.toml"]
    _assert_one_line(*_run(argv), "num_beams", "[1, 64]", "1000000")


def test_python_arguments_are_checked_alike():
    with pytest.raises(LmforgeError, match=r"--keep-last \(recipe key keep_last\) must be an integer"):
        PretrainConfig(keep_last=-3)
    with pytest.raises(LmforgeError, match="num_beams"):
        GenerationConfig(num_beams=10**6)
    assert FinetuneConfig(model="m", epochs=2).epochs == 2.0  # a float field takes an int
    assert PretrainConfig(data="corpus.txt").data == ["corpus.txt"]  # a list field one string


# --- particular cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["pretrain"], ["prepare", "--out", "x"], ["finetune", "--model", "m"]])
def test_a_huge_training_seed_is_refused(tmp_path, command):
    """Training seeds go to torch and NumPy generators, which take 64 bits (generate's seed is taken
    modulo 2**63 instead: it seeds one sampler, so any integer is a reproducible seed)."""
    code, stderr = _run([*command, "--seed", 2**70])
    _assert_one_line(code, stderr, "--seed", "[0, 2**63)")


UNAVAILABLE = [
    d
    for d in ("banana", "xla", "cuda:-1", "mps", "cuda", f"cuda:{max(torch.cuda.device_count(), 7)}")
    if not (d == "mps" and torch.backends.mps.is_available())
    and not (d == "cuda" and torch.cuda.is_available())
]


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("one line\nanother line\n")
    return path


@pytest.mark.parametrize("device", UNAVAILABLE)
def test_an_unavailable_device_is_one_line_before_anything_is_loaded(tmp_path, texts, device):
    missing = tmp_path / "no-model"  # never opened: the device is refused first
    commands = [
        ["generate", "--model", missing, "--prompt", "hi"],
        ["embed", "--model", missing, "--input", texts, "--out", tmp_path / "v.npy"],
        ["search", "--model", missing, "--corpus", texts, "--query", "line"],
        ["pretrain", "--out", tmp_path / "run"],
        ["finetune", "--model", missing, "--out", tmp_path / "run"],
        ["evaluate", "--model", missing, "--data", texts],
    ]
    for command in commands:
        _assert_one_line(*_run([*command, "--device", device]), repr(device))
    assert not (tmp_path / "run").exists()


def test_a_cuda_index_beyond_the_gpus_names_those_there_are(monkeypatch):
    from lmforge.device import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(
        LmforgeError, match=r"'cuda:7' does not exist: this machine has 1 CUDA GPU \(cuda:0\)"
    ):
        check_device("cuda:7")
    assert check_device("cuda:0") == torch.device("cuda", 0)


def test_checkpoint_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    """keep_last below 1 is refused by the config; the writer itself still keeps the newest."""
    from lmforge.train.checkpoint import checkpoint_dirs, write_checkpoint

    def save_model(d):
        (d / "model.safetensors").write_bytes(b"weights")

    for step, keep_last in [(1, 3), (2, -3), (3, 0)]:
        written = write_checkpoint(
            tmp_path,
            step,
            save_model=save_model,
            optim_state={"state": {}, "param_groups": []},
            trainer_state={},
            keep_last=keep_last,
        )
        assert checkpoint_dirs(tmp_path)[-1] == written


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, wordpiece):
    out = tmp_path_factory.mktemp("bert") / "bert"
    torch.manual_seed(0)
    build_model(get_preset("bert-tiny", vocab_size=wordpiece.vocab_size, use_mlm_head=False)).save_pretrained(
        out
    )
    wordpiece.save_pretrained(out)
    return out


def test_generate_with_an_encoder_says_what_to_use_instead(bert_dir):
    line = _assert_one_line(*_run(["generate", "--model", bert_dir, "--prompt", "the"]), str(bert_dir))
    assert "encoder (bert)" in line and "decoder" in line and "embed" in line


def test_generate_takes_any_integer_seed(tmp_path):
    (tmp_path / "c.txt").write_text("abcdefgh " * 20)
    tok = train_tokenizer([tmp_path / "c.txt"], vocab_size=32, kind="char")
    torch.manual_seed(0)
    build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=32)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    argv = ["generate", "--model", tmp_path / "m", "--prompt", "abc", "--max-new-tokens", 4, "--seed"]
    assert _run([*argv, 2**70]) == _run([*argv, 2**70]) == (0, "")


# --- as users run it: real subprocesses for a few representative cases ----------------------------


@pytest.mark.slow
def test_representative_cases_in_a_real_process(tmp_path, bert_dir):
    (tmp_path / "recipe.toml").write_text('lr = "fast"\n')
    assert_one_line_error(
        run_lmforge("pretrain", "--config", tmp_path / "recipe.toml", "--out", tmp_path / "run"),
        "--lr",
        "'fast'",
    )
    assert_one_line_error(
        run_lmforge("generate", "--model", bert_dir, "--prompt", "the", "--num-beams", 10**6), "--num-beams"
    )
    assert_one_line_error(run_lmforge("generate", "--model", bert_dir, "--prompt", "the"), "encoder")
    assert_one_line_error(run_lmforge("pretrain", "--device", "banana", "--out", tmp_path / "run"), "banana")
    assert not (tmp_path / "run").exists()


def test_finetune_cuts_max_length_to_the_models_positions(capsys):
    """A --max-length past BERT's position table indexed past it (an IndexError mid-run); it is cut to
    the table, and said. A T5's relative positions have no such limit."""
    from lmforge.train.finetune import _fit_max_length

    bert = build_model(get_preset("bert-tiny", vocab_size=64))
    config = FinetuneConfig(model="m", max_length=10**5)
    _fit_max_length(config, bert)
    assert config.max_length == bert.max_positions
    assert f"using {bert.max_positions}" in capsys.readouterr().out
    t5 = build_model(get_preset("t5-tiny", vocab_size=64))
    config = FinetuneConfig(model="m", task="seq2seq", max_length=10**5)
    _fit_max_length(config, t5)
    assert config.max_length == 10**5
