"""Run folders as run.py writes them, made by hand for the report and plot tests."""
import json
from pathlib import Path

COUNTS = {"train images": 12, "train classes": 3, "test images": 12, "test classes": 3}


def fake_run(folder: Path, records: list[dict], result: str | None = None, **flags) -> Path:
    """A run folder as run.py writes it: config.json (with ``flags`` over a triplet CUB run), metrics.jsonl and
    result.txt (``result``, or the best and final Recall@1 of ``records`` in today's format)."""
    base = {"dataset": "cub200", "lambda_mdr": 0.0, "nu_mdr": 0.0, "l2norm": False, "loss": "triplet",
            "loss_args": [], "epochs": records[-1]["epoch"], "seed": 1, "batch": 8, "load": None, "eval_every": 1,
            "workers": 0, "data": "/data", "save_dir": str(folder)}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"flags": {**base, **flags}, "data": {"counts": COUNTS},
                                                    "weights": None}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if result is None:
        scored = [r for r in records if "Recall@1" in r]
        best = max(scored, key=lambda r: (r["Recall@1"], -r["epoch"]))
        result = (f"Best Recall@1: {best['Recall@1']:.4f} (epoch {best['epoch']})\n"
                  f"Final Recall@1: {records[-1]['Recall@1']:.4f}\n")
    (folder / "result.txt").write_text(result)
    return folder


TRAINED = {"loss": 0.5, "mdr_loss": 0.0, "levels": [-3.0, 0.0, 3.0]}  # what a trained epoch's record adds


def curve(*recalls: float, start: int = 0) -> list[dict]:
    """metrics.jsonl records of epochs ``start``, ``start`` + 1, ... with these Recall@1 and Recall@2 = R@1 + 10."""
    return [{"epoch": start + i, **(TRAINED if start + i else {}), "Recall@1": r, "Recall@2": r + 10}
            for i, r in enumerate(recalls)]
