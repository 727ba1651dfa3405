"""Grids of run.py flags (``tools.sweep --grid``) and the folder names of their points.

A grid is one ``FLAG=V1,V2,...`` per flag; a flag that takes several numbers separates them by spaces
(``"mdr-levels=-3 0 3,-2 0 2"``). A point takes one value of each flag. Its runs go to a folder named
``FLAG=V,FLAG=V`` (spaces written as ``_``), which ``tools.report`` reads back to label their rows,
with the values the runs' config.json recorded.
"""
import argparse
import itertools
import re

from errors import UserError

Point = tuple[tuple[str, str], ...]  # ((flag without "--", value as given), ...)
# Flags a grid must not set, and what to use instead.
NOT_IN_GRID = {"seed": "--seeds", "dataset": "--dataset", "resume": "the sweep itself", "save_dir": "--root",
               "overwrite": "nothing (the sweep never overwrites a run)", "mode": "nothing (a sweep trains)"}
_NAME = re.compile(r"[a-z][a-z0-9-]*")


def parse_grid(specs: list[str], parser: argparse.ArgumentParser, extra: list[str]) -> list[tuple[str, list[str]]]:
    """[(flag without "--", [values])] of ``--grid`` ``specs``, checked against the options of ``parser``.

    ``extra`` (the flags after ``--``) must not set a grid flag too.
    """
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        action = parser._option_string_actions.get("--" + name.replace("_", "-"))
        if not sep or action is None:
            raise UserError(f"--grid {spec}: expected FLAG=V1,V2,... with a flag of run.py, e.g. lambda-mdr=0.2,0.6")
        flag = action.option_strings[0].removeprefix("--")
        if action.dest in NOT_IN_GRID:
            raise UserError(f"--grid {spec}: --{flag} cannot be a grid flag; use {NOT_IN_GRID[action.dest]}")
        if action.nargs == 0:
            raise UserError(f"--grid {spec}: --{flag} takes no value; a grid flag needs values (for --l2norm "
                            "use --methods)")
        if any(option in extra for option in action.option_strings):
            raise UserError(f"--grid {spec}: --{flag} is also given after --; set it in one place")
        if flag in (f for f, _ in grid):
            raise UserError(f"--grid: --{flag} is given twice; list all its values in one FLAG=V1,V2,...")
        parts = [v.strip() for v in values.split(",")]
        if not all(parts) or any("/" in v for v in parts):
            raise UserError(f"--grid {spec}: every value must be non-empty and hold no '/' (values are "
                            "separated by commas)")
        grid.append((flag, parts))
    return grid


def points(grid: list[tuple[str, list[str]]]) -> list[Point]:
    """Every point of the cross product of ``grid``, in the order of its flags and values; [()] for no grid."""
    return [tuple(zip((flag for flag, _ in grid), values)) for values in itertools.product(*(v for _, v in grid))]


def point_flags(point: Point) -> list[str]:
    """The run.py flags of ``point``: ``--FLAG`` followed by the value's space-separated parts."""
    return [arg for flag, value in point for arg in ["--" + flag, *value.split()]]


def folder_name(point: Point) -> str:
    """``FLAG=V,FLAG=V`` with spaces as ``_``; "" for the empty point of a sweep without grid."""
    return ",".join(f"{flag}={'_'.join(value.split())}" for flag, value in point)


def value_order(text: str) -> tuple:
    """A sort key of a grid value: numbers (and lists of numbers) by value, before other text."""
    try:
        return 0, [float(v) for v in text.split()], text
    except ValueError:
        return 1, [], text


def folder_flags(name: str) -> list[str] | None:
    """The flags of a point folder's ``name`` (``FLAG=V,FLAG=V``), None when it does not name a point."""
    pairs = [part.partition("=") for part in name.split(",")]
    if not all(sep and _NAME.fullmatch(flag) for flag, sep, _ in pairs):
        return None
    return [flag for flag, _, _ in pairs]
