"""The network's backend settings on CPU: TF32 convolutions, deterministic algorithms, cuDNN autotuning.

torch's backend flags exist on CPU builds, so what a CUDA run sets is checked here; what it changes in
the numbers needs a GPU (bench/device_check.py).
"""
import json
import os

import pytest
import torch

import run
from experiment.device import configure_backends
from experiment.flags import get_args_parser
from minidata import make_cub
from small_run import SMALL, run_main


@pytest.fixture
def backends(monkeypatch):
    """Restore every flag ``configure_backends`` sets."""
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, torch.are_deterministic_algorithms_enabled())
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", os.environ.get("CUBLAS_WORKSPACE_CONFIG", ""))
    yield cudnn
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved[:3]
    torch.use_deterministic_algorithms(saved[3])


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("tf32", [False, True])
def test_the_flags_set_what_they_say_on_every_device(backends, device, deterministic, tf32):
    configure_backends(torch.device(device), deterministic, tf32)
    assert backends.allow_tf32 is tf32
    assert backends.conv.fp32_precision == ("tf32" if tf32 else "none")  # "none": no TF32 for convolutions
    assert backends.benchmark is (device == "cuda" and not deterministic)
    assert backends.deterministic is deterministic and torch.are_deterministic_algorithms_enabled() is deterministic
    if deterministic:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cuda.matmul.fp32_precision == "none"  # matrix products untouched: IEEE by default
    assert torch.get_float32_matmul_precision() == "highest"


def test_no_tf32_is_recorded_in_config_json_and_holds_while_the_network_trains(backends, tmp_path, monkeypatch):
    root = make_cub(tmp_path / "data")
    seen = []
    real = run.train_one_epoch

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.allow_tf32)
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "train_one_epoch", spy)
    for name, flags in (("default", []), ("ieee", ["--no-tf32"])):
        run_main(SMALL + flags + ["--data", str(root), "--save-dir", str(tmp_path / name), "--epochs", "1"])
    assert seen == [True, False]
    records = [json.loads((tmp_path / name / "config.json").read_text())["flags"] for name in ("default", "ieee")]
    assert [r["tf32"] for r in records] == [True, False]
    assert "--no-tf32" in get_args_parser().format_help()
