"""The command line of run.py and every command of tools/: one parser class and one way to end in one line.

``ArgumentParser`` shows every default in ``--help`` and reports a bad flag in
one line (a mistyped flag with the nearest real one, by ``difflib``) instead of
the whole usage; ``exit_status`` turns a UserError into one line on stderr.
"""
import argparse
import copy
import difflib
import re
import sys
from typing import Callable, Sequence

from errors import UserError

_SAYS_DEFAULT = re.compile(r"\bdefault\b", re.IGNORECASE)
_NUMBER = re.compile(r"-\.?\d")


def shown_default(value: object) -> str:
    """A default as it would be typed on the command line: ``[40, 60, 80]`` -> ``40 60 80``, ``1e-4`` -> ``0.0001``."""
    if isinstance(value, (list, tuple)):
        return " ".join(shown_default(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and ``(default: X)`` after each flag's help.

    Left out where it would say nothing or say it twice: switches (no value),
    required flags, defaults of None, and help that already names its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.nargs == 0 or action.required or default is None or default is argparse.SUPPRESS
                or default == [] or _SAYS_DEFAULT.search(text)):
            return text
        return f"{text} (default: {shown_default(default).replace('%', '%%')})".lstrip()

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._get_help_string(action):  # argparse prints no help line for a flag without help
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with ``HelpFormatter`` and one-line errors: ``PROG: error: MESSAGE``, exit code 2.

    ``prog`` is the script (``run.py``) or the module (``tools.report``); the
    hint of an unknown flag is the command that lists the flags.
    """

    def __init__(self, prog: str, description: str | None = None, **kwargs):
        super().__init__(prog=prog, description=description, formatter_class=HelpFormatter, **kwargs)

    def help_command(self) -> str:
        """``python run.py --help`` or ``python -m tools.report --help``."""
        return f"python {self.prog} --help" if self.prog.endswith(".py") else f"python -m {self.prog} --help"

    def parse_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown(extras))
        return parsed

    def unknown(self, extras: Sequence[str]) -> str:
        """The message for the arguments the parser did not take: the first unknown flag and the flag it is
        closest to, e.g. ``unknown flag --lamda-mdr; did you mean --lambda-mdr?``."""
        flag = next((a for a in extras if a.startswith("-") and not _NUMBER.match(a)), None)
        hint = f"({self.help_command()} lists the flags)"
        if flag is None:
            return f"unexpected argument {extras[0]!r} {hint}"
        name = flag.partition("=")[0]
        known = [option for option in self._option_string_actions if option.startswith("--")]
        close = difflib.get_close_matches(name, known, n=1)
        return f"unknown flag {name}" + (f"; did you mean {close[0]}?" if close else "") + f" {hint}"

    def error(self, message: str):
        if message.startswith("the following arguments are required"):
            message += f" ({self.help_command()} lists the flags)"
        self.exit(2, f"{self.prog}: error: {message}\n")


def given_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations that ``argv`` sets explicitly (``parser`` is left as it was)."""
    defaults = [(action, action.default) for action in parser._actions]
    for action, _ in defaults:
        action.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults:
            action.default = default


def parse_noting_given(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` (``sys.argv[1:]`` when None) with ``_given``: the flags typed explicitly,
    which a run's saved flags must not override."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args._given = given_flags(parser, argv)
    return args


def exit_status(action: Callable[[], object], interrupted: str | None = None) -> int:
    """Run ``action``; 0 when it returns, 1 after a UserError printed as ``error: MESSAGE`` on stderr.

    With ``interrupted``, Ctrl-C prints it and gives 130.
    """
    try:
        action()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return 130
    return 0
