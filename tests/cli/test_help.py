"""`--help` documents every flag of every command, and a task's options have one default everywhere.

The commands and their flags are read from the parser itself, so a new flag without help fails here. A
task option (--max-length, --stride, ...) is a field of the task's options class: `finetune`,
`evaluate` and the task's own command (`classify`, `answer`) leave its default to that field, so none of
them can default to another value.
"""

import argparse
import dataclasses

import pytest

from lmforge import cli
from lmforge import config as cfg
from lmforge.train.finetune import FinetuneConfig
from lmforge.train.tasks import TASKS, ClassificationOptions, QAOptions


def _parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser) of the command line and every subcommand under it."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*prefix, name))


PARSERS = dict(_parsers(cli.build_parser()))
ACTIONS = [(prefix, action) for prefix, parser in PARSERS.items() for action in parser._actions]


def _name(prefix, action) -> str:
    return " ".join(["lmforge", *prefix, *(action.option_strings[:1] or [action.dest])])


@pytest.mark.parametrize(("prefix", "action"), ACTIONS, ids=[_name(p, a) for p, a in ACTIONS])
def test_every_flag_has_help(prefix, action):
    assert action.help and action.help.strip() and action.help is not argparse.SUPPRESS, _name(prefix, action)
    if isinstance(action, argparse._SubParsersAction):
        for choice in action._choices_actions:  # each verb's line in the list of verbs
            assert choice.help and choice.help.strip(), f"{_name(prefix, action)} {choice.dest}"


def test_help_prints_for_every_command(capsys):
    for prefix in PARSERS:
        with pytest.raises(SystemExit) as exited:
            cli.build_parser().parse_args([*prefix, "--help"])
        assert exited.value.code == 0
        assert "--help" in capsys.readouterr().out


# The commands that take a task's options, with what they need to parse, and the options class
# their command builds: (argv, options class, --task).
TASK_COMMANDS = (
    [(["finetune", "--model", "m", "--task", name], FinetuneConfig, name) for name in TASKS]
    + [(["evaluate", "--model", "m", "--data", "d", "--task", name], FinetuneConfig, name) for name in TASKS]
    + [
        (["classify", "--model", "m", "--input", "x"], ClassificationOptions, "classification"),
        (["answer", "--model", "m", "--input", "x"], QAOptions, "qa"),
    ]
)


@pytest.mark.parametrize(
    ("argv", "built", "task"), TASK_COMMANDS, ids=[" ".join(c[0][:1] + c[0][-1:]) for c in TASK_COMMANDS]
)
def test_task_options_take_the_tasks_defaults(argv, built, task):
    """Each option of the task that the command takes has no default of the command's own, and builds to
    the default of the task's options class; the help says that default."""
    parser = PARSERS[(argv[0],)]
    flags = {a.dest: a for a in parser._actions if a.option_strings}
    args = cli.build_parser().parse_args(argv)
    config = cfg.build(built, args)
    taken = [f for f in dataclasses.fields(TASKS[task].options) if f.name in flags]
    assert any(f.name == "max_length" for f in taken)
    for f in taken:
        # no default of the command's own, on the flag or set for the whole command
        assert flags[f.name].default is argparse.SUPPRESS and f.name not in parser._defaults, f.name
        assert getattr(config, f.name) == f.default, (argv[0], f.name)
        if f.default not in (None, ""):
            assert f"(default: {f.default})" in flags[f.name].help, (argv[0], f.name)


def test_classify_and_answer_take_their_tasks_length_options():
    """The flags that say how a text is cut are the task's: the same names in finetune, evaluate and the
    task's own command."""
    classify = {a.dest for a in PARSERS[("classify",)]._actions}
    answer = {a.dest for a in PARSERS[("answer",)]._actions}
    assert "max_length" in classify
    assert {f.name for f in dataclasses.fields(QAOptions)} <= answer
    for command in ("finetune", "evaluate"):
        flags = {a.dest for a in PARSERS[(command,)]._actions}
        assert set(cli.task_option_names()) <= flags, command


def test_a_given_task_option_reaches_the_command():
    args = cli.build_parser().parse_args(["answer", "--model", "m", "--input", "x", "--stride", "7"])
    assert cfg.build(QAOptions, args).stride == 7
