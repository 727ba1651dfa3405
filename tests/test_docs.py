"""The documentation cannot drift: every flag is in docs/flags.md, every relative link resolves, and the
README's quick start runs as written."""
import argparse
import re
import runpy
import shlex
import signal
import sys
import warnings
from pathlib import Path

import pytest

from dataset import DATASETS
from experiment.flags import get_args_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9_-]*")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
TOOLS = sorted(p.stem for p in (ROOT / "tools").glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def without_code_blocks(text: str) -> str:
    """``text`` with its fenced code blocks blanked (their lines kept, so line numbers stay)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
            continue
        out.append("" if fenced else line)
    return "\n".join(out)


def sections(text: str, level: str = "## ") -> dict[str, str]:
    """{heading: body} of the ``level`` headings of markdown ``text`` (outside code blocks)."""
    out, heading = {}, None
    for line in without_code_blocks(text).splitlines():
        if line.startswith(level):
            heading = line[len(level):].strip()
            out[heading] = ""
        elif heading is not None:
            out[heading] += line + "\n"
    return out


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions if not isinstance(action, argparse._HelpAction)
            for s in action.option_strings}


class _Parsed(Exception):
    """Raised by the patched parse_known_args with the parser a command built."""


def command_parser(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser that ``python -m tools.NAME`` (or ``python SCRIPT.py``) builds, caught when it first parses."""
    def caught(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", caught)
    monkeypatch.setattr(sys, "argv", [command])
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module was imported before
            if command.endswith(".py"):
                runpy.run_path(str(ROOT / command), run_name="__main__")
            else:
                runpy.run_module(command, run_name="__main__")
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        signal.signal(signal.SIGTERM, handler)
    raise AssertionError(f"{command} parsed no arguments")


def documented_flags() -> dict[str, set[str]]:
    """{command: flags named in the first column of the tables of its section of docs/flags.md}."""
    out = {}
    for heading, body in sections((ROOT / "docs" / "flags.md").read_text()).items():
        flags = {f for line in body.splitlines() if line.startswith("| `")
                 for f in FLAG.findall(line.split("|")[1])}
        for command in re.findall(r"`([\w.]+)`", heading):
            out[command] = flags
    return out


def test_the_tools_commands_are_found():
    assert {"sweep", "report", "plot", "index", "search", "export", "manifest", "toy_data"} <= set(TOOLS)


@pytest.mark.parametrize("command", ["run.py", "run_inshop.py"] + [f"tools.{name}" for name in TOOLS])
def test_every_flag_of_a_command_is_in_docs_flags_md_and_no_other(command, monkeypatch):
    documented = documented_flags()
    assert command in documented, f"docs/flags.md has no section naming `{command}`"
    flags = option_strings(command_parser(command, monkeypatch))
    assert not flags - documented[command], f"{command}: missing from docs/flags.md: {sorted(flags - documented[command])}"
    assert not documented[command] - flags, \
        f"{command}: docs/flags.md names flags that do not exist: {sorted(documented[command] - flags)}"


def test_run_py_takes_the_same_flags_for_every_dataset():
    flags = {name: option_strings(get_args_parser(name)) for name in DATASETS}
    assert len({frozenset(f) for f in flags.values()}) == 1, flags


def github_anchor(heading: str) -> str:
    """The #anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, seen = set(), {}
    for line in without_code_blocks(path.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = github_anchor(match.group(1))
            out.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
            seen[anchor] = seen.get(anchor, 0) + 1
    return out


def relative_links(path: Path) -> list[str]:
    return [t for t in LINK.findall(without_code_blocks(path.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_anchor_rule_is_githubs():
    assert github_anchor("Grids: the paper's ablations") == "grids-the-papers-ablations"
    assert github_anchor("`tools.index`") == "toolsindex"
    assert github_anchor("NMI against scikit-learn") == "nmi-against-scikit-learn"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(doc):
    broken = []
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        linked = (doc.parent / file).resolve() if file else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_the_readme_links_every_document_of_docs():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    assert not {p.resolve() for p in DOCS[1:]} - linked


def test_every_document_begins_with_what_it_holds():
    for doc in DOCS[1:]:
        lines = doc.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2].startswith("This page"), doc.name


def test_the_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 12_500
    order = ["Two commands", "Quick start", "The authors' commands", "Your own images", "Use a trained model",
             "Documentation"]
    headings = list(sections(text))
    where = [next(i for i, h in enumerate(headings) if h.startswith(o)) for o in order]
    assert where == sorted(where), headings


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q" in ci
    assert "-r requirements.txt -r requirements-extra.txt" in ci
    readme = (ROOT / "README.md").read_text()
    assert "bash .ci/run" in readme and "`.venv/bin/python -m pytest -q`" in readme


def quick_start() -> tuple[list[list[str]], str]:
    """(the commands of the README's quick-start code block, the section's prose)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    return [c for c in commands if c], re.sub(r"```.*?```", "", section, flags=re.DOTALL)


def run_command(argv: list[str]) -> None:
    """Run ``.venv/bin/python ARGS`` in this process, as the shell would run it from the repository."""
    assert argv[0] in (".venv/bin/python", "python"), argv
    if argv[1] == "-m":
        sys.argv = [argv[2]] + argv[3:]
        call = lambda: runpy.run_module(argv[2], run_name="__main__")
    else:
        sys.argv = argv[1:]
        call = lambda: runpy.run_path(str(ROOT / argv[1]), run_name="__main__")
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            call()
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"{shlex.join(argv)} exited with {exit_.code}"
    finally:
        signal.signal(signal.SIGTERM, handler)


def test_the_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    """The README's commands, run in an empty folder (the repository's files stay untouched), write every
    file the section names, and the report prints the run's row."""
    commands, prose = quick_start()
    assert [c[1:3] for c in commands] == [["-m", "tools.toy_data"], ["run.py", "--dataset"], ["-m", "tools.report"]]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    for argv in commands:
        run_command(argv)
    out = capsys.readouterr().out
    named = set(re.findall(r"`(toy_run/[\w.]+)`", prose))
    assert {"toy_run/curves.png", "toy_run/retrievals.png", "toy_run/result.txt"} <= named
    assert [n for n in sorted(named) if not (tmp_path / n).is_file()] == []
    assert re.search(r"^\| folder \| Triplet\+MDR \| best epoch", out, re.MULTILINE), out[-2000:]
    assert "Best Recall@1" in (tmp_path / "toy_run" / "result.txt").read_text()
