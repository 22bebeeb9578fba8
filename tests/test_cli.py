"""stafast.cli: a parser derived from a typed config dataclass (flags, types, defaults in --help,
choices, groups, required and positional fields, subcommands, the constructor's errors)."""
from dataclasses import dataclass
from typing import Literal

import pytest

from stafast import cli
from stafast.cli import option


@dataclass(kw_only=True)
class Toy:
    """A toy command."""
    checkpoint: str = option(help="a file")
    inputs: tuple[str, ...] = option(help="things to read", positional=True)
    kind: str = option("b", "which kind", "choosing", choices={"a": 1, "b": 2})
    size: int = option(3, "how many", "choosing")
    rate: float = option(0.5, "how fast")
    steps: tuple[int, ...] = option((1, 2), "steps")
    split: int | Literal["all"] = option(0, "a split or all")
    mode: Literal["x", "y"] = option("x", "a mode")
    fast: bool = option(False, "go fast")
    check: bool = option(True, "check afterwards")
    progress: bool | None = option(None, "bars (default: on a terminal)")
    note: str | None = option(None, "anything")

    def __post_init__(self):
        if self.size > 10:
            raise ValueError(f"size={self.size} must be <= 10")


@dataclass(kw_only=True)
class Other:
    """Another command.

    With more to say."""
    count: int = option(1, "a count")


def parse(*argv, **kw):
    return cli.parse(Toy, list(argv), module="stafast.toy", **kw)


def test_values_of_every_kind():
    t = parse("--checkpoint", "c.pt", "in1", "in2", "--kind", "a", "--size", "7", "--rate", "1e-3", "--steps", "4,5,6",
              "--split", "all", "--mode", "y", "--fast", "--no-check", "--progress", "--note", "hi")
    assert t == Toy(checkpoint="c.pt", inputs=("in1", "in2"), kind="a", size=7, rate=1e-3, steps=(4, 5, 6), split="all",
                    mode="y", fast=True, check=False, progress=True, note="hi")
    defaults = parse("--checkpoint", "c.pt", "x", "--split", "3")
    assert defaults == Toy(checkpoint="c.pt", inputs=("x",), split=3)  # the dataclass's defaults
    assert (defaults.check, defaults.progress, defaults.steps) == (True, None, (1, 2))


def test_help_shows_prog_groups_defaults_presets_and_choices(capsys):
    with pytest.raises(SystemExit):
        parse("--help", presets={"--kind a": {"size": 9}})
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m stafast.toy")
    assert "choosing: --kind {a,b} which kind (default: b) --size SIZE how many (default: 3; with --kind a: 9)" in text
    assert "--steps INT[,...] steps (default: 1,2)" in text and "--split {N,all} a split or all (default: 0)" in text
    assert "--check, --no-check check afterwards (default: on)" in text and "--fast go fast" in text
    assert "--fast go fast (default" not in text and "--note NOTE anything" in text


@pytest.mark.parametrize("argv, message", [
    (["x"], "the following arguments are required: --checkpoint"),
    (["--checkpoint", "c", "x", "--kind", "c"], "argument --kind: invalid choice: 'c' (choose from a, b)"),
    (["--checkpoint", "c", "x", "--steps", "1,x"], "expected comma-separated int values, got '1,x'"),
    (["--checkpoint", "c", "x", "--split", "some"], "expected an integer or one of ('all',), got 'some'"),
    (["--checkpoint", "c", "x", "--size", "11"], "size=11 must be <= 10"),  # the constructor's ValueError
])
def test_errors_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.replace("'a', 'b'", "a, b")


def test_build_replaces_the_constructor():
    built = parse("--checkpoint", "c", "x", build=lambda **given: given)
    assert built == {"checkpoint": "c", "inputs": ("x",)}  # only what was given


def test_subcommands(capsys):
    commands = {"toy": Toy, "other": Other}
    assert cli.parse(commands, ["other", "--count", "4"], module="stafast.both") == Other(count=4)
    assert cli.parse(commands, ["toy", "--checkpoint", "c", "x"], module="stafast.both").checkpoint == "c"
    with pytest.raises(SystemExit):
        cli.parse(commands, ["--help"], module="stafast.both")
    text = " ".join(capsys.readouterr().out.split())
    assert "{toy,other}" in text and "toy A toy command other Another command" in text


def test_registry_help_lists_each_entry_with_its_docstring():
    def a():
        """First entry.

        More."""

    def b():
        pass
    assert cli.registry_help("the thing", {"a": a, "b": b}) == "the thing (a: First entry; b: )"
