"""What a checkpoint holds and how a resume restores it on another device type or GPU count, and under fp16."""
import shutil
import struct
from collections import OrderedDict

import torch

import run
from dataset.sampler import PKSampler, SeededShards
from experiment.rng import derived_seed, restore_generator, rng_state
from minidata import make_cub
from model.checkpoint import save_atomic
from small_run import SMALL, run_main


def cuda_state(seed: int, offset: int) -> torch.Tensor:
    """A CUDA generator's state as torch lays it out: the Philox seed (uint64) then its offset (int64), 16 bytes."""
    return torch.tensor(list(struct.pack("<Qq", seed, offset)), dtype=torch.uint8)


class CudaGenerator:
    """A CUDA generator as ``restore_generator`` uses it, for a machine without one: it takes only its own states."""

    device = torch.device("cuda")

    def __init__(self):
        self.state, self.seed = cuda_state(0, 0), None

    def get_state(self) -> torch.Tensor:
        return self.state

    def set_state(self, state: torch.Tensor) -> None:
        if state.numel() != 16:
            raise RuntimeError("RNG state is wrong size")
        self.state = state

    def manual_seed(self, seed: int) -> "CudaGenerator":
        self.seed = seed
        return self


def _weights(folder) -> dict:
    return torch.load(folder / "last.pth", weights_only=True)


def test_a_run_started_on_a_gpu_resumes_on_the_cpu_the_same_way_every_time(tmp_path, capsys):
    """The checkpoint of a CUDA run (its negatives generator's 16-byte Philox state) resumes with --device cpu,
    in today's format (the device recorded) and in the older one (the device inferred from the state's size),
    and both resumes train the same weights."""
    root = make_cub(tmp_path / "data")
    started = tmp_path / "started"
    run_main(SMALL + ["--data", str(root), "--workers", "0", "--epochs", "1", "--image-size", "32",
                      "--save-dir", str(started)])
    state = torch.load(started / "checkpoint.pth", weights_only=True)
    state["args"]["device"] = "cuda"
    state["rng"].update(negatives=cuda_state(1, 4096), negatives_device="cuda", cuda=[cuda_state(1, 128)])
    older_format = {**state, "rng": {k: v for k, v in state["rng"].items() if k != "negatives_device"}}
    recorded, older = tmp_path / "recorded", tmp_path / "older"
    for folder, saved, saved_on in ((recorded, state, "cuda"), (older, older_format, "another device")):
        shutil.copytree(started, folder)
        torch.save(saved, folder / "checkpoint.pth")
        run_main(["--resume", str(folder), "--device", "cpu", "--epochs", "2"])
        assert f"generator was saved on {saved_on} and cannot continue on cpu" in capsys.readouterr().out
    a, b = _weights(recorded), _weights(older)
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = torch.load(recorded / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["rng"]["negatives_device"] == "cpu"


def test_a_cpu_state_reseeds_a_cuda_generator_and_each_device_keeps_its_own():
    cpu_state = torch.Generator().manual_seed(7).get_state()
    assert cpu_state.numel() == 5056
    gpu = CudaGenerator()
    restore_generator(gpu, cpu_state, "cpu")
    assert gpu.seed == derived_seed(cpu_state) and gpu.state.numel() == 16
    restore_generator(gpu, cuda_state(3, 64), "cuda")
    assert torch.equal(gpu.state, cuda_state(3, 64))
    older = CudaGenerator()
    restore_generator(older, cpu_state, None)  # a checkpoint from before the device was recorded
    assert older.seed == derived_seed(cpu_state)
    cpu = torch.Generator()
    restore_generator(cpu, cuda_state(3, 64), "cuda")
    assert torch.equal(cpu.get_state(), torch.Generator().manual_seed(derived_seed(cuda_state(3, 64))).get_state())
    assert derived_seed(cuda_state(3, 64)) != derived_seed(cuda_state(3, 80)) < 2**63
    restore_generator(cpu, cpu_state, "cpu")
    assert torch.equal(cpu.get_state(), cpu_state)


def test_a_checkpoint_of_an_eight_gpu_node_resumes_on_two_gpus(monkeypatch):
    """torch.cuda.set_rng_state_all indexed every saved state: a node with fewer GPUs raised IndexError. The
    process's own device takes the state of the device the checkpoint's writer (rank 0) trained on."""
    sampler = SeededShards(PKSampler([0, 0, 1, 1], 4, 2, 1, seed=1), seed=1)
    state = rng_state(sampler, torch.Generator().manual_seed(1))
    state["cuda"] = [cuda_state(1, 1000 + i) for i in range(8)]
    restored = []

    def set_rng_state(new_state, device="cuda"):
        index = device if isinstance(device, int) else (torch.device(device).index or 0)
        if index >= 2:
            raise IndexError("tuple index out of range")  # torch.cuda.default_generators has one per GPU
        restored.append((new_state, index))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # rank 1 of a torchrun on two GPUs
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_rng_state)
    run.set_rng_state(state, sampler, torch.Generator())
    assert len(restored) == 1 and torch.equal(restored[0][0], state["cuda"][0]) and restored[0][1] == 1


def test_an_fp16_resume_continues_the_loss_scale_and_the_weights(tmp_path, monkeypatch):
    """The GradScaler's state is in checkpoint.pth: an fp16 run stopped after epoch 1 and resumed ends as the
    uninterrupted run, skipped steps included. The CPU's fp16 autocast and GradScaler stand in for CUDA's; the
    scale grows 2^24-fold per step, so epoch 2's step overflows fp16, and the scaler skips it and backs off; a
    scaler started afresh at 1 would take that step."""
    monkeypatch.setattr(run, "amp_settings", lambda enabled, device: (torch.float16, torch.amp.GradScaler(
        "cpu", init_scale=1.0, growth_factor=2.0**24, growth_interval=1)) if enabled else (None, None))
    root = make_cub(tmp_path / "data")
    common = SMALL + ["--data", str(root), "--workers", "0", "--amp", "--image-size", "32", "--iter-per-epoch", "1"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_main(common + ["--epochs", "2", "--save-dir", str(whole)])
    run_main(common + ["--epochs", "1", "--save-dir", str(resumed)])
    after_one = torch.load(resumed / "checkpoint.pth", weights_only=True)["scaler"]
    assert after_one["scale"] == 2.0**24 and after_one["growth_interval"] == 1
    run_main(["--resume", str(resumed), "--epochs", "2"])
    a, b = (torch.load(f / "checkpoint.pth", weights_only=True) for f in (whole, resumed))
    assert a["scaler"] == b["scaler"] and a["scaler"]["scale"] == 2.0**23  # epoch 2's step was skipped
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


class OnDevice(torch.Tensor):
    """A tensor that says it lives on a GPU; ``cpu()`` brings a plain tensor home."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    def cpu(self, *args, **kwargs) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).clone()


def test_saved_files_hold_cpu_tensors_that_a_plain_load_reads(tmp_path):
    """best.pth, last.pth and checkpoint.pth of a GPU run held CUDA tensors: a plain torch.load on a machine
    without a GPU failed. Every tensor is saved from the CPU, and a state_dict keeps its version metadata."""
    weights = OrderedDict(w=torch.arange(3.0).as_subclass(OnDevice), n=torch.tensor(2))
    weights._metadata = OrderedDict({"": {"version": 2}})
    state = {"model": weights, "optimizer": {"state": {0: {"exp_avg": torch.ones(2).as_subclass(OnDevice)}}},
             "rng": {"cuda": [torch.zeros(16, dtype=torch.uint8).as_subclass(OnDevice)], "python": (3, (1, 2), None)}}
    save_atomic(state, tmp_path / "checkpoint.pth")
    loaded = torch.load(tmp_path / "checkpoint.pth", weights_only=True)
    assert type(loaded["model"]["w"]) is torch.Tensor and torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert loaded["model"]._metadata == {"": {"version": 2}}
    assert type(loaded["optimizer"]["state"][0]["exp_avg"]) is torch.Tensor
    assert type(loaded["rng"]["cuda"][0]) is torch.Tensor and loaded["rng"]["python"] == (3, (1, 2), None)


def test_torchrun_prints_no_deprecation_warning_of_ddp(tmp_path):
    """DDP's broadcast_buffers=False printed a FutureWarning on every rank (torch 2.13+); forward_sync_buffers=False
    is its replacement (the buffers, identical on every rank, are also broadcast once at the start)."""
    from test_distributed import SMALL as DDP_SMALL
    from test_distributed import _torchrun
    root = make_cub(tmp_path / "data")
    done = _torchrun(DDP_SMALL + ["--data", str(root), "--workers", "0", "--epochs", "1",
                                  "--save-dir", str(tmp_path / "r")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "broadcast_buffers" not in done.stderr, done.stderr[-3000:]
