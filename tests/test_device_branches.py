"""The branches that differ on CUDA, MPS and under torchrun, run on the CPU with the device queries mocked.

docs/devices.md lists every such branch and the test that runs it.
"""
import sys

import pytest
import torch
import torch.distributed as dist

import run
from errors import UserError
from experiment import distributed
from experiment.config import device_record
from experiment.device import select_device
from experiment.distributed import Context
from minidata import make_cub
from small_run import SMALL


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_the_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert select_device("auto") == torch.device(expected)


def test_cuda_asked_for_where_there_is_none_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cuda was asked for but no CUDA device is available"):
        select_device("cuda")


def test_each_rank_takes_the_gpu_of_its_local_rank(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert distributed.device_for(Context(rank=5, world=8, local_rank=1), torch.device("cuda")) == \
        torch.device("cuda", 1)
    assert chosen == [1]
    assert distributed.device_for(Context(rank=1, world=2, local_rank=1), torch.device("cpu")) == torch.device("cpu")
    assert distributed.device_for(Context(), torch.device("cuda")) == torch.device("cuda")  # one process: as given
    assert chosen == [1]


@pytest.mark.parametrize("device, backend", [("cuda", "nccl"), ("cpu", "gloo"), ("mps", "gloo")])
def test_the_process_group_is_nccl_on_cuda_and_gloo_elsewhere_and_other_ranks_print_nothing(
        monkeypatch, capsys, device, backend):
    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda name, **kw: calls.append((name, kw)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroyed"))
    stdout = sys.stdout
    with distributed.process_group(Context(rank=1, world=2), torch.device(device)):
        print("rank 1 speaking")
        assert sys.stdout is not stdout
    assert sys.stdout is stdout
    assert calls == [(backend, {"rank": 1, "world_size": 2}), "destroyed"]
    assert "rank 1 speaking" not in capsys.readouterr().out


def test_cuda_loaders_pin_memory_and_the_others_do_not(tmp_path):
    args = run.parse_args(SMALL + ["--data", str(make_cub(tmp_path))])
    train_set, eval_sets = run.build_datasets(args)
    for device, pinned in (("cuda", True), ("cpu", False), ("mps", False)):
        train, evals = run.build_loaders(args, train_set, eval_sets, torch.device(device))
        assert train.pin_memory is pinned and all(loader.pin_memory is pinned for loader in evals.values())


def test_config_json_names_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"NVIDIA H200 ({device})")
    assert device_record(torch.device("cuda", 1)) == {"type": "cuda", "name": "NVIDIA H200 (cuda:1)"}
    assert device_record(torch.device("mps")) == {"type": "mps"}
