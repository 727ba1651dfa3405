"""bench/device_check.py, the prepared check for the first GPU, runs on the CPU with its small sizes (its run
checks on the tests' small backbone: BN-Inception's run.py path is test_run_cub.py's)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from small_run import BACKBONE

ROOT = Path(__file__).resolve().parent.parent
EQUALITY = {"deterministic", "channels_last", "recall_vs_cpu", "torchrun", "end_to_end"}
RATES = {"train_fp32", "train_amp", "eval"}


def test_the_device_check_runs_on_cpu_and_every_equality_holds(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from device_check import ROWS
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "device_check.py"), "--out", str(tmp_path / "out"),
                           "--small", "--workers", "0", "--run-backbone", BACKBONE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert tuple(rows) == ROWS and report["environment"]["device"] == "cpu"
    assert report["environment"]["run_backbone"] == BACKBONE
    for name in EQUALITY:
        assert rows[name]["passed"] is True, rows[name]
    for name in RATES:
        assert rows[name]["value"] > 0 and rows[name]["passed"] is None, rows[name]
    assert rows["train_amp"]["detail"].startswith("bfloat16")
    # on the CPU the "device" is the CPU: the same step twice, to the bit
    assert rows["step_vs_cpu"]["value"] == 0 and rows["step_vs_cpu_tf32"]["value"] == 0
    assert "world size 1" in rows["torchrun"]["detail"]
    table = done.stdout[done.stdout.index("check "):]
    assert all(name in table for name in ROWS) and "FAILED" not in table
