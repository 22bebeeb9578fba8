"""One way to make a command line: an argparse parser derived from a typed config dataclass.

    @dataclass(kw_only=True)
    class ExportConfig:
        checkpoint: str = option(help="a stafast.train checkpoint.pt")              # no default: required
        format: str = option(help="file format", choices=FORMATS)                   # a registry's names
        opset: int = option(18, "ONNX opset")
        verify: bool = option(True, "compare the file with PyTorch after writing")  # --verify/--no-verify

    cfg = cli.parse(ExportConfig, argv, module="stafast.export", description=__doc__)

Each field is one flag, --field-name (or a positional argument: `option(positional=True)`), with
its help, its group in --help and its choices (any iterable of names, e.g. a registry dict) from
`option`.  The value's type comes from the annotation: int, float, str; bool (a False default:
a plain switch, otherwise --x/--no-x); tuple[T, ...] (comma-separated, or several positional
values); Literal[...] (its values are the choices); int | Literal["all", ...] (a number or one of
those words, e.g. --split).  --help shows the dataclass's defaults, and presets where a config
has some.  The parser itself holds no default: what was not given is left out, so the config's
own constructor (`build`, e.g. one that applies presets) fills it in, and its ValueError becomes
a usage error.  A dict {name: dataclass} makes one subcommand per entry.

    cli.run(main, "stafast.export")   # the __main__ block of every command line

`run` prints an expected error (EXPECTED: stafast.errors.UserError, MissingExtra) as one line and
exits 2; --debug (every parser lists it) or STAFAST_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from typing import Literal, NoReturn

from .errors import UserError
from .extras import MissingExtra

COMMAND = "command"  # where parse keeps the subcommand's name
DEBUG = "--debug"    # every command line takes it (run() reads it, parse() ignores it)
EXPECTED = (UserError, MissingExtra)  # errors that run() reports in a line: what is wrong and where


def option(default=dataclasses.MISSING, help: str = "", group: str | None = None, choices=None, *,
           positional: bool = False, **argparse_kwargs) -> dataclasses.Field:
    """A config field with what its flag needs: `help`, `group` (a section of --help; None: the
    general one), `choices` (names; stored as a tuple), `positional`, and any other keyword of
    argparse's add_argument (e.g. nargs="?", const=..., metavar=...).  No default: a required flag."""
    return dataclasses.field(default=default, metadata=dict(
        help=help, group=group, choices=None if choices is None else tuple(choices), positional=positional,
        cli=argparse_kwargs))


def _unwrap(hint) -> tuple:
    """(kind, detail) of a field's annotation, without None: ("bool"|"scalar"|"tuple"|"literal"|"int_or", ...)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if int in args and literals and len(args) == 2:
            return "int_or", typing.get_args(literals[0])
        if len(args) == 1:
            return _unwrap(args[0])
        raise TypeError(f"cli: cannot make a flag of the annotation {hint}")
    if typing.get_origin(hint) is tuple:
        return "tuple", args[0]
    if typing.get_origin(hint) is Literal:
        return "literal", typing.get_args(hint)
    if hint is bool:
        return "bool", None
    return "scalar", hint


def summary(obj) -> str:
    """The first line of obj's docstring, without its full stop ("" without one)."""
    return (obj.__doc__ or "").strip().split("\n")[0].rstrip(".")


def registry_help(what: str, registry: dict) -> str:
    """`what`, then each name of `registry` with the summary of its entry: the help of a flag whose
    choices are the registry's names (so a new entry documents itself)."""
    return f"{what} (" + "; ".join(f"{name}: {summary(entry)}" for name, entry in registry.items()) + ")"


def comma_separated(kind: type):
    def parse(text: str) -> tuple:
        try:
            return tuple(kind(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None
    return parse


def int_or(words: tuple[str, ...]):
    def parse(text: str):
        if text in words:
            return text
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer or one of {words}, got {text!r}") from None
    parse.__name__ = "int or " + "/".join(words)  # argparse names the type in its errors
    return parse


def shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _argument(f: dataclasses.Field, hint, presets: dict[str, dict]) -> tuple[list[str], dict]:
    """add_argument's names and keywords for field `f`."""
    m = f.metadata
    kind, detail = _unwrap(hint)
    kw = dict(help=m["help"], default=None)  # None: not given, the config's constructor fills it in
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if kind == "bool":
        kw["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
    elif kind == "tuple":
        if m["positional"]:
            kw.update(nargs="+", type=detail)
        else:
            kw.update(type=comma_separated(detail), metavar=f"{detail.__name__.upper()}[,...]")
    elif kind == "literal":
        kw.update(choices=detail)
    elif kind == "int_or":
        kw.update(type=int_or(detail), metavar=f"{{N,{','.join(detail)}}}")
    else:
        kw["type"] = detail
    if m["choices"] is not None:
        kw["choices"] = m["choices"]
    if not required and f.default is not None and f.default is not False:
        notes = [f"default: {'on' if f.default is True else shown(f.default)}"]
        notes += [f"with {when}: {shown(values[f.name])}" for when, values in presets.items() if f.name in values]
        kw["help"] += f" ({'; '.join(notes)})"
    kw.update(m["cli"])
    if m["positional"]:
        return [f.name], kw
    if required:
        kw["required"] = True
    return ["--" + f.name.replace("_", "-")], {**kw, "dest": f.name}


def add_fields(parser: argparse.ArgumentParser, config: type, presets: dict[str, dict] | None = None) -> None:
    """One argument per field of the dataclass `config`, in the field's group."""
    hints = typing.get_type_hints(config)
    groups = {}
    for f in dataclasses.fields(config):
        group = f.metadata["group"]
        if group is not None and group not in groups:
            groups[group] = parser.add_argument_group(group)
        names, kw = _argument(f, hints[f.name], presets or {})
        (groups[group] if group is not None else parser).add_argument(*names, **kw)


class Parser(argparse.ArgumentParser):
    """argparse's parser (its subcommands' too), whose usage error is two lines, the error and
    where the usage is, not the whole usage first (stafast.train's is 40 lines)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n  (the usage: {self.prog} --help)\n")


def build_parser(config: type | dict[str, type], module: str, description: str | None = None,
                 presets: dict[str, dict] | None = None) -> argparse.ArgumentParser:
    """The parser of `python -m <module>` for the dataclass `config`, or one subcommand per entry of
    a dict {name: dataclass} (each with the first line of its docstring as help).  `presets`:
    {"--dataset synthetic": {field: value}}, shown beside the defaults in --help."""
    parser = Parser(prog=f"python -m {module}", description=description,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    add_debug(parser)
    if not isinstance(config, dict):
        add_fields(parser, config, presets)
        return parser
    commands = parser.add_subparsers(dest=COMMAND, required=True, metavar="{" + ",".join(config) + "}")
    for name, cls in config.items():
        command = commands.add_parser(name, help=summary(cls), description=cls.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        add_debug(command)
        add_fields(command, cls, presets)
    return parser


def add_debug(parser: argparse.ArgumentParser) -> None:
    """The --debug flag that `run` reads, in `parser`'s --help."""
    parser.add_argument(DEBUG, action="store_true", default=None,
                        help="on an error, show its traceback instead of one line (or set STAFAST_DEBUG=1)")


def parse(config: type | dict[str, type], argv: list[str] | None = None, *, module: str,
          description: str | None = None, presets: dict[str, dict] | None = None, build=None):
    """The config instance that `argv` describes: build(**the given values) (build: the dataclass
    itself by default, or e.g. a classmethod applying presets), a ValueError of which is reported as
    a usage error.  With subcommands, an instance of the chosen one's dataclass."""
    parser = build_parser(config, module, description, presets)
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None and k != "debug"}
    cls = config[given.pop(COMMAND)] if isinstance(config, dict) else config
    try:
        return (build or cls)(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
    except ValueError as e:
        parser.error(str(e))


def error(config: type | dict[str, type], module: str, message: str) -> NoReturn:
    """Stop as argparse does on a bad argument (usage, `message`, exit status 2)."""
    build_parser(config, module).error(message)


def run(main, module: str, argv: list[str] | None = None) -> NoReturn:
    """Run the command line `python -m <module>`: main(argv) (default sys.argv[1:]), then exit with
    the status main returns if it is an int (else 0).  An expected error (EXPECTED: bad data, a
    missing or unreadable file, a setting that does not fit, a missing optional dependency) is
    printed as one line, `python -m <module>: error: <message>`, then how to see its traceback, and
    exits 2; Ctrl-C before the command handles it exits 130 with one line.  --debug (anywhere in
    argv, taken out before main sees it) or STAFAST_DEBUG=1 lets every error through with its
    traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG in argv or os.environ.get("STAFAST_DEBUG", "0") not in ("", "0")
    try:
        status = main([a for a in argv if a != DEBUG])
    except EXPECTED as e:
        if debug:
            raise
        print(f"python -m {module}: error: {e}\n  (the traceback: add {DEBUG} or set STAFAST_DEBUG=1)", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"python -m {module}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(status if isinstance(status, int) else 0)
