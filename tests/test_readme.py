"""The README's commands exist as written: every module or script it runs, every subcommand and
every flag it passes are in that command's --help, every `make` target is in the Makefile, and no
placeholder of an unfinished section is left.  (The commands that need real datasets cannot run
here; the synthetic ones run in their own tests: test_train, test_video, test_visualize, ...)"""
from __future__ import annotations

import importlib
import os
import re
import runpy
import shlex
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
README = os.path.join(ROOT, "README.md")


def bash_lines() -> list[str]:
    """The command lines of the README's bash blocks, continuations joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", open(README).read(), re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.split(" #")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def command(line: str) -> tuple[str, list[str]] | None:
    """(module or script, its arguments) of a `python -m M ...`, `torchrun ... -m M ...` or
    `python path.py ...` line; None for other commands (make, bash, pytest)."""
    words = shlex.split(line.replace("|", " "))
    if "-m" in words and words[0] in ("python", "torchrun"):
        at = words.index("-m")
        return words[at + 1], words[at + 2:]
    if words[0] == "python" and words[1].endswith(".py"):
        return words[1], words[2:]
    return None


def help_text(target: str, argv: list[str], capsys) -> str:
    """What `target argv --help` prints, run in this process (imports are shared: fast)."""
    with pytest.raises(SystemExit) as done:
        if target.endswith(".py"):
            sys.argv = [target, *argv, "--help"]
            runpy.run_path(os.path.join(ROOT, target), run_name="__main__")
        else:
            importlib.import_module(target).main([*argv, "--help"])
    assert done.value.code in (0, None), f"{target} {' '.join(argv)} --help exited with {done.value.code}"
    return capsys.readouterr().out


def subcommands(help_out: str) -> list[str]:
    """The choices of a parser's subcommands, as argparse lists them under its positional arguments."""
    found = re.search(r"(?m)^positional arguments:\n\s+\{([\w,+-]+)\}", help_out)
    return found.group(1).split(",") if found else []


COMMANDS = [c for c in map(command, bash_lines()) if c is not None]


@pytest.mark.parametrize("target,args", COMMANDS, ids=[f"{t} {' '.join(a)[:40]}" for t, a in COMMANDS])
def test_readme_command_flags_exist(target, args, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    top = help_text(target, [], capsys)
    subs = subcommands(top)
    argv = [args[0]] if subs and args and args[0] in subs else []
    assert not subs or argv, f"README runs {target} without one of its subcommands {subs}: {args}"
    out = help_text(target, argv, capsys) if argv else top
    flags = [a.split("=")[0] for a in args if a.startswith("--") and a != "--help"]
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", out)]
    assert not missing, f"README passes {missing} to {target} {' '.join(argv)}, which its --help does not list"


def test_readme_make_targets_and_no_placeholders():
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    targets = {w.split()[1] for w in bash_lines() if w.startswith("make ")}
    assert targets and all(re.search(rf"(?m)^{t}:", makefile) for t in targets), targets
    text = open(README).read()
    left = re.findall(r"(?m)^[A-Z][A-Z_]{5,}$", text)
    assert not left, f"README has unfilled placeholders: {left}"
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", text):
        assert os.path.exists(os.path.join(ROOT, link)), f"README links to {link}, which does not exist"
