"""Device branches that only run on CUDA or MPS, run here on the CPU with the device queries mocked."""
import importlib.util
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision

import run
from dataset.transforms import authors_normalization, device_normalization
from errors import UserError
from experiment import device as device_module
from experiment.device import amp_settings, select_device
from metric.device import float64_device
from metric.nmi import nmi
from metric.ranking import memory_budget_for, tile_shape
from metric.retrieval import retrieval_metrics

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("capability,dtype,scaled", [((7, 0), torch.float16, True), ((7, 5), torch.float16, True),
                                                     ((8, 0), torch.bfloat16, False), ((9, 0), torch.bfloat16, False)])
def test_amp_on_cuda_follows_the_compute_capability(monkeypatch, capability, dtype, scaled):
    """V100 (7.0) and T4 (7.5) get fp16 with a GradScaler although torch counts their emulated bf16 as supported;
    Ampere (8.0) and newer get bf16 without a scaler."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # torch >= 2.3 counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    amp_dtype, scaler = amp_settings(True, torch.device("cuda"))
    assert amp_dtype == dtype
    if scaled:
        assert isinstance(scaler, torch.amp.GradScaler) and scaler._device == "cuda" and scaler.is_enabled()
    else:
        assert scaler is None
    assert amp_settings(False, torch.device("cuda")) == (None, None)


def test_amp_on_mps_is_fp16_with_a_scaler_and_bf16_on_the_cpu():
    amp_dtype, scaler = amp_settings(True, torch.device("mps"))
    assert amp_dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler) and scaler._device == "mps"
    assert amp_settings(True, torch.device("cpu")) == (torch.bfloat16, None)


def test_an_absent_mps_device_is_one_line_as_cuda_is(monkeypatch):
    monkeypatch.setattr(device_module, "mps_available", lambda: False)
    with pytest.raises(UserError, match="--device mps was asked for but MPS is not available.*--device auto or cpu"):
        select_device("mps")
    monkeypatch.setattr(device_module, "mps_available", lambda: True)
    assert select_device("mps") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("mps")


def test_device_mps_on_a_machine_without_it_stops_the_command_line_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)  # as on every Linux machine
    assert run.cli(["--device", "mps", "--no-pretrained", "--no-download", "--data", "/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device mps was asked for but MPS is not available" in err


def test_requirements_allow_no_torch_older_than_the_tested_one():
    """requirements.txt allowed torch 2.1, on which run.py did not even import (torch.amp.GradScaler came in 2.3,
    DDP's forward_sync_buffers in 2.13); CI installs one version, so the floor is that version."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    for package, module in (("torch", torch), ("torchvision", torchvision)):
        spec = next(line for line in lines if re.fullmatch(rf"{package}\s*[<>=].*", line))
        floor = re.search(r">=\s*(\d+)\.(\d+)", spec).groups()
        installed = re.match(r"(\d+)\.(\d+)", module.__version__).groups()
        assert installed == floor, f"{package} {module.__version__} is tested, but requirements.txt says {spec}"


class OnMPS(torch.Tensor):
    """A tensor that behaves as one on Apple's MPS, for a machine without it: it says it lives there, stays
    there through ``.to("mps")``, comes home with ``.to("cpu")`` or ``.cpu()``, and refuses float64 as MPS does."""

    @property
    def device(self) -> torch.device:
        return torch.device("mps", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            target = [torch.device(a) for a in list(args[1:]) + [kwargs.get("device")] if isinstance(a, (str, torch.device))]
            if func is torch.Tensor.cpu or (target and target[0].type == "cpu"):
                return args[0].as_subclass(torch.Tensor).clone()
            if target and target[0].type == "mps" and len(args) + len(kwargs) == 2:
                return args[0]
        result = super().__torch_function__(func, types, args, kwargs)
        if func is torch.Tensor.double or (isinstance(result, torch.Tensor) and result.dtype == torch.float64):
            raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
                            "float64. Please use float32 instead.")
        return result


def test_metrics_of_embeddings_on_mps_are_computed_on_the_cpu():
    """The exact ranking and k-means run in float64, which MPS lacks: Recall@K, MAP@R and NMI of MPS embeddings
    are those of the same embeddings on the CPU."""
    g = torch.Generator().manual_seed(0)
    emb, labels = torch.randn(60, 8, generator=g), torch.arange(60) % 6
    on_mps = emb.as_subclass(OnMPS), labels.as_subclass(OnMPS)
    with pytest.raises(TypeError, match="float64"):
        on_mps[0].double()
    expected = retrieval_metrics(emb, labels, None, None, [1, 4], ("recall", "map_r"))
    assert retrieval_metrics(*on_mps, None, None, [1, 4], ("recall", "map_r")) == expected
    assert retrieval_metrics(*on_mps, *on_mps, [1], "recall")["Recall@1"] == 100.0
    assert nmi(*on_mps) == nmi(emb, labels)
    assert [float64_device(torch.device(d)) for d in ("mps", "cuda", "cpu")] == \
           [torch.device("cpu"), torch.device("cuda"), torch.device("cpu")]


def test_a_tile_of_a_huge_gallery_on_a_big_gpu_stays_below_two_to_the_31_entries():
    """8,192 rows of a 300,000-item gallery are 2.5e9 entries, more than CUDA's nonzero takes on older torch."""
    budget = memory_budget_for(torch.device("cuda"), free_bytes=140 * 2**30)  # an H200's free memory
    rows, cols = tile_shape(300_000, 300_000, budget)
    assert cols == 300_000 and rows == (2**31 - 1) // 300_000 and rows * cols < 2**31
    rows, cols = tile_shape(3_000_000, 3_000_000, budget)
    assert rows == 1024 and rows * cols < 2**31 and cols > 2_000_000
    assert tile_shape(60502, 60502, budget) == (8192, 60502)  # SOP keeps its whole-row tiles


TF32_GUARD = """
import torch
from metric.ranking import _ieee_products
b = torch.backends


def settings():
    out = [b.fp32_precision, b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision, b.cudnn.conv.fp32_precision]
    for read in (torch.get_float32_matmul_precision, lambda: b.cuda.matmul.allow_tf32):
        try:
            out.append(read())
        except RuntimeError:  # the legacy and the newer settings disagree: torch refuses a product then
            out.append("mixed")
    return out


def legacy_high(): torch.set_float32_matmul_precision("high")
def legacy_allow_tf32(): torch.set_float32_matmul_precision("highest"); b.cuda.matmul.allow_tf32 = True
def newer_tf32(): torch.set_float32_matmul_precision("highest"); b.cuda.matmul.fp32_precision = "tf32"
def newer_global_tf32(): b.cuda.matmul.fp32_precision = "none"; b.fp32_precision = "tf32"


for setup in (lambda: None, legacy_high, legacy_allow_tf32, newer_tf32, newer_global_tf32):
    setup()
    before = settings()
    with _ieee_products(torch.device("cuda")):
        during = settings()
    assert settings() == before, (before, settings())
    assert during[1] == "ieee" and during[-1] is False, during  # TF32 off, the settings consistent
    if setup is newer_global_tf32 or before[1] == "none":  # cuBLAS still follows the generic setting
        for probe in ("tf32", "ieee"):
            b.fp32_precision = probe
            assert b.cuda.matmul.fp32_precision == probe, settings()
        b.fp32_precision = before[0]
print("ok")
"""


def test_the_tf32_guard_of_the_metrics_leaves_every_precision_setting_as_it_found_it():
    """After an evaluation on CUDA, torch.backends.cuda.matmul.fp32_precision read "ieee" instead of the untouched
    "none" (the legacy call the guard used also set the newer values). Each way a user can set TF32, in a fresh
    process (torch refuses to mix the two APIs), reads the same before and after, and TF32 is off inside."""
    out = subprocess.run([sys.executable, "-c", TF32_GUARD], capture_output=True, text=True, check=False,
                         cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr[-3000:]


@pytest.mark.parametrize("backbone", ["bninception", "resnet50"])
def test_the_normalisation_constants_go_to_the_device_once(monkeypatch, backbone):
    """Every batch copied the mean, std and 255 from pageable host memory to the device (a synchronising copy on
    CUDA); they are copied once per device, and the batches come out bit-identical to the authors' chain."""
    normalize = device_normalization(backbone)
    holder = normalize.__self__
    constants = [t for t in (holder.byte_max, holder.mean, holder.std) if t is not None]
    copies = []
    real_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        if any(self is c for c in constants):
            copies.append(args)
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(3)]
    outputs = [normalize(b) for b in batches]
    assert len(copies) == len(constants)
    authors = authors_normalization(backbone)
    for batch, out in zip(batches, outputs):
        expected = torch.stack([authors(image.permute(1, 2, 0).numpy()) for image in batch])
        assert torch.equal(out, expected)


def test_the_evaluation_bench_starts_its_timer_after_the_warm_up_has_finished_on_the_device(monkeypatch):
    """bench/train_speed.py started the evaluation timer while the warm-up could still run on the GPU (the
    benches now time the extraction in bench/timing.py)."""
    path = ROOT / "bench" / "train_speed.py"
    spec = importlib.util.spec_from_file_location("train_speed", path)
    train_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_speed)
    from bench import timing
    events = []
    real_extract = timing.extract
    monkeypatch.setattr(timing, "synchronize", lambda device: events.append("synchronize"))
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: events.append("clock") or
                                                              float(len(events))))
    monkeypatch.setattr(timing, "extract", lambda *a, **k: events.append("extract") or real_extract(*a, **k))
    assert train_speed.eval_speed(torch.device("cpu"), 1, 1) > 0
    assert events == ["extract", "synchronize", "clock", "extract", "synchronize", "clock"]
