"""Issue 23's code parts: --help shows every default, a mistyped flag is one line with the nearest flag, the
pictures say what they show, and no module imports a layer above its own."""
import argparse
import ast
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import run
from experiment.cli import ArgumentParser, shown_default
from experiment.flags import get_args_parser
from loss.mdr import level_names
from minidata import make_cub
from tools import export, index, manifest, plot, report, retrievals, search, sweep

REPO = Path(__file__).resolve().parent.parent
PARSERS = {"run.py": get_args_parser(), "run_inshop.py": get_args_parser("inshop"),
           "tools.export": export.get_args_parser(), "tools.index": index.get_args_parser(),
           "tools.manifest": manifest.get_args_parser(), "tools.plot": plot.get_args_parser(),
           "tools.report": report.get_args_parser(), "tools.search": search.get_args_parser(),
           "tools.sweep": sweep.get_args_parser()}


def _entries(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each flag's entry of --help, its lines joined: {"--lr": "--lr LR Adam learning rate ... (default: 0.0001)"}."""
    options = parser.format_help().split("\noptions:\n", 1)[1]
    entries = [" ".join(e.split()).replace("- ", "-") for e in re.split(r"\n  (?=-)", "\n" + options) if e.strip()]
    return {e.split()[0].rstrip(","): e for e in entries}


def _needs_default(action: argparse.Action) -> bool:
    return not (action.nargs == 0 or action.required or action.default is None or action.default == [])


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_names_every_default_once(name):
    parser = PARSERS[name]
    assert isinstance(parser, ArgumentParser) and parser.prog == name
    text, entries = parser.format_help(), _entries(parser)
    formatter = parser._get_formatter()
    for action in (a for a in parser._actions if _needs_default(a) and a.option_strings):
        shown = " ".join(formatter._expand_help(action).split()).replace("- ", "-")
        assert entries[action.option_strings[0]].endswith(shown), (name, action.option_strings)  # always a line
        assert len(re.findall(r"\bdefault\b", shown, re.IGNORECASE)) == 1, shown  # said once, by hand or not
        if not re.search(r"\bdefault\b", action.help or "", re.IGNORECASE):
            assert shown.endswith(f"(default: {shown_default(action.default)})"), shown
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text


def test_defaults_are_written_as_typed():
    entries = _entries(get_args_parser())
    for flag, default in (("--lr-decay-epochs", "(default: 40 60 80)"), ("--lr", "(default: 0.0001)"),
                          ("--mdr-levels", "(default: -3 0 3)"), ("--backbone", "(default: bninception)"),
                          ("--epochs", "(default: 100)"), ("--save-retrievals", "(default: 0)")):
        assert entries[flag].endswith(default), entries[flag]
    assert "(default" not in entries["--l2norm"] and "(default" not in entries["--resume"]


@pytest.mark.parametrize("argv, line", [
    (["--lamda-mdr", "0.1"], "run.py: error: unknown flag --lamda-mdr; did you mean --lambda-mdr? "
                             "(python run.py --help lists the flags)"),
    (["--epcohs=3"], "run.py: error: unknown flag --epcohs; did you mean --epochs? (python run.py --help lists "
                     "the flags)"),
    (["--recall", "1", "--zzzz"], "run.py: error: unknown flag --zzzz (python run.py --help lists the flags)"),
    (["stray"], "run.py: error: unexpected argument 'stray' (python run.py --help lists the flags)"),
])
def test_a_mistyped_flag_is_one_line_with_the_nearest_flag(argv, line, capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(argv)
    assert exc.value.code == 2 and capsys.readouterr().err == line + "\n"


def test_tools_name_themselves_and_their_help(capsys):
    with pytest.raises(SystemExit) as exc:
        report.main(["result", "--formt", "csv"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("tools.report: error: unknown flag --formt; did you mean --format? "
                                       "(python -m tools.report --help lists the flags)\n")
    with pytest.raises(SystemExit):
        export.cli(["--load", "w.pth"])
    assert capsys.readouterr().err == ("tools.export: error: the following arguments are required: --format, --out "
                                       "(python -m tools.export --help lists the flags)\n")


def test_the_authors_flag_abbreviations_keep_their_meaning():
    args = run.parse_args(["--epoch", "3", "--save", "out", "--num_image_per_class", "3", "--lambda", "0.6"])
    assert (args.epochs, args.save_dir, args.num_image_per_class, args.lambda_mdr) == (3, "out", 3, 0.6)


def test_a_user_error_of_a_tool_is_one_line(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "not found" in err


def _grid_rows(tmp_path: Path) -> list[retrievals.GridRow]:
    make_cub(tmp_path, classes=2, per_class=2)
    paths = [str(p) for p in sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))]
    return [retrievals.GridRow(paths[0], 0, [(paths[1], 0), (paths[2], 1)]),
            retrievals.GridRow(paths[3], 1, [(paths[2], 1), (paths[0], None)])]


def test_retrieval_grid_title_and_legend_are_drawn(tmp_path):
    rows = _grid_rows(tmp_path)
    plain = retrievals.draw_grid(rows, tmp_path / "plain.png")
    title = retrievals.grid_title("cub200 test split, best.pth (epoch 7)", 2, 2, worst=True)
    assert title == ("cub200 test split, best.pth (epoch 7): the 2 worst queries by AP@R, worst first, and their "
                     "top 2 retrievals")
    assert retrievals.grid_title("x", 3, 5) == "x: 3 evenly spaced queries and their top 5 retrievals"
    titled = retrievals.draw_grid(rows, tmp_path / "titled.png", title)
    with Image.open(plain) as a, Image.open(titled) as b:
        a, b = a.convert("RGB"), b.convert("RGB")
        assert b.width == a.width and b.height > a.height
        inked = [y for y in range(b.height) if any(sum(b.getpixel((x, y))) < 200 for x in range(0, b.width, 2))]
        head = next(y for y in range(b.height) if b.crop((0, y, b.width, y + a.height)).tobytes() == a.tobytes())
        assert head > 0 and inked[0] < head  # the title is drawn above the tiles, which are unchanged
        legend = b.crop((0, head + a.height, b.width, b.height))
        colours = {c for _, c in legend.getcolors(1 << 16)}
        assert {retrievals.GREEN, retrievals.RED, retrievals.GREY} <= colours  # the swatches of the legend
        longer = retrievals.draw_grid(rows, tmp_path / "long.png", title + " and more words" * 8)
        with Image.open(longer) as c:
            assert c.width == a.width and c.height > b.height  # a long title wraps instead of being cut


def test_save_retrieval_grid_titles_worst_queries(tmp_path, monkeypatch):
    make_cub(tmp_path, classes=2, per_class=3)
    samples = [(str(p), i // 3) for i, p in enumerate(sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg")))]
    emb, labels = torch.tensor([[0.0], [0.1], [5.05], [5.0], [5.1], [0.2]]), torch.tensor([0, 0, 0, 1, 1, 1])
    titles = []
    draw = retrievals.draw_grid
    monkeypatch.setattr(retrievals, "draw_grid", lambda rows, out, title=None: titles.append(title) or draw(rows, out))
    retrievals.save_retrieval_grid((emb, labels), samples, (emb, labels), samples, 2, tmp_path / "g.png", k=1,
                                   exclude_self=True, worst=True, shows="cub200 test split, x.pth")
    retrievals.save_retrieval_grid((emb, labels), samples, (emb, labels), samples, 2, tmp_path / "e.png", k=1,
                                   exclude_self=True)
    assert titles == ["cub200 test split, x.pth: the 2 worst queries by AP@R, worst first, and their top 1 "
                      "retrievals", None]


def _records() -> list[dict]:
    first = [{"epoch": 0, "lr": 1e-4, "levels": [-3.0, 0.0, 3.0], "Recall@1": 40.0}]
    return first + [{"epoch": e, "loss": 0.3 / e, "mdr_loss": 0.05, "lr": 1e-4, "levels": [-3.0 + e / 10, 0.0, 3.0],
                     "Recall@1": 40.0 + e} for e in range(1, 6)]


def _figure(monkeypatch, draw):
    """The matplotlib figure ``draw`` saves."""
    figures = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, out: figures.append(fig) or out)
    draw()
    return figures[0]


def test_curves_have_units_integer_epochs_and_epoch_0_as_a_point(tmp_path, monkeypatch):
    fig = _figure(monkeypatch, lambda: plot.plot_curves(_records(), tmp_path / "curves.png"))
    loss, recall, levels = fig.axes
    assert "%" in recall.get_ylabel() and "loss" in loss.get_ylabel() and "std" in levels.get_ylabel()
    for ax in fig.axes:
        ax.figure.canvas.draw()
        assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()
    points = [line for line in recall.get_lines() if len(line.get_xdata()) == 1]
    assert len(points) == 1 and list(points[0].get_xdata()) == [0] and list(points[0].get_ydata()) == [40.0]
    assert [t.get_text() for t in levels.get_legend().get_texts()] == level_names(3) == ["level_1", "level_2",
                                                                                       "level_3"]


def test_histogram_names_its_epoch_and_checkpoint(tmp_path, monkeypatch):
    sample = {"distances": torch.randn(200, generator=torch.Generator().manual_seed(0)),
              "levels": torch.tensor([-3.0, 0.0, 3.0]), "epoch": 7}
    fig = _figure(monkeypatch, lambda: plot.plot_histogram(sample, tmp_path / "h.png"))
    assert fig.axes[0].get_title() == "Test distances and MDR levels after epoch 7 (last.pth)"
    old = {k: v for k, v in sample.items() if k != "epoch"}  # a sample written before the epoch was recorded
    fig = _figure(monkeypatch, lambda: plot.plot_histogram(old, tmp_path / "h.png"))
    assert "last.pth" in fig.axes[0].get_title() and "epoch 7" not in fig.axes[0].get_title()
    assert [t.get_text().split("\n")[0] for t in fig.axes[0].texts] == level_names(3)


# The layers, bottom to top. A module may import its own layer and those below; metric/ is below model/ and loss/.
LAYERS = {"errors": 0, "optional": 0, "metric": 1, "model": 2, "loss": 2, "dataset": 3, "experiment": 4, "tools": 5,
          "run": 6, "run_inshop": 6}
SIDEWAYS = {"model": {"loss"}, "loss": {"model"}}  # the two folders of one layer do not use each other
ALLOWED: dict[tuple[str, str], str] = {}  # (module file, imported module): why the upward import must stay


def _imports(path: Path) -> list[str]:
    """Every absolute module name that ``path`` imports, also inside functions."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_no_module_imports_a_layer_above_its_own():
    modules = [p for p in REPO.rglob("*.py") if p.relative_to(REPO).parts[0].removesuffix(".py") in LAYERS]
    assert len(modules) > 60 and REPO / "run.py" in modules and REPO / "experiment" / "cli.py" in modules
    upward = []
    for path in modules:
        here = path.relative_to(REPO).parts[0].removesuffix(".py")
        for name in _imports(path):
            there = name.split(".")[0]
            if there in LAYERS and (LAYERS[there] > LAYERS[here] or there in SIDEWAYS.get(here, ())):
                if (path.relative_to(REPO).as_posix(), name) not in ALLOWED:
                    upward.append(f"{path.relative_to(REPO)} imports {name}")
    assert upward == []


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tools.plot import plot_run\n    import run\n")
    assert _imports(bad) == ["tools.plot", "run"]
