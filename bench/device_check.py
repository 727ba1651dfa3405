"""The prepared check for the first GPU: speed, agreement with the CPU, and the paths that only a GPU runs.

    python bench/device_check.py --out DIR     # under 8 minutes on one GPU; DIR/device_check.json
    python bench/device_check.py --out DIR --small   # the CPU sizes anywhere (a test runs it on CPU)

One summary table is printed and written to DIR/device_check.json. Its rows:

- train_fp32, train_amp: BN-Inception training images/s (batch 128, 224 px on CUDA) through
  run.train_one_epoch, in float32 and with --amp's dtype; the ratio.
- step_vs_cpu, step_vs_cpu_tf32: one training step on the device against the same step on the CPU
  (same He-initialised weights, images, deterministic hard negatives): the difference of the updated
  weights relative to the update, with IEEE float32 convolutions and with TF32 ones (--no-tf32 or not).
- deterministic: two --deterministic runs of run.py (2 epochs on a generated CUB tree): identical weights.
- channels_last: the training loss of one batch with the network and input in channels_last and in
  the contiguous layout (IEEE float32): the same to 1e-4.
- recall_vs_cpu: the exact Recall@K of the same clustered embeddings (self-retrieval and a query
  against a gallery) on the device and on the CPU: equal.
- eval: embeddings/s of experiment.extraction.extract at --eval-batch 128.
- torchrun: ``torchrun --nproc-per-node N run.py`` (N = --nproc, default 1) against the plain run:
  identical weights for one process (world size 1 starts no process group, as in run.py, so a single
  GPU cannot exercise NCCL); with N > 1 (nccl on CUDA, gloo on CPU), the same to 1e-4.
- end_to_end: a CUB-shaped run through --cache-dir, --amp and --deterministic, stopped after epoch 1
  and resumed, against the same run uninterrupted: identical weights and complete outputs.

A check that fails or raises is a FAILED row with its reason; the others still run, and the
command exits 1. Without a GPU everything runs on the CPU with small sizes (64 px, batch 8).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run  # noqa: E402
from bench.loopback import free_port  # noqa: E402
from bench.timing import extraction_rate  # noqa: E402
from bench.weights_diff import flat, identical, relative  # noqa: E402
from dataset.transforms import device_normalization  # noqa: E402
from experiment.device import amp_settings, configure_backends, select_device, synchronize  # noqa: E402
from experiment.flags import bounded_int  # noqa: E402
from loss.mdr import MDRLoss  # noqa: E402
from loss.sampler import build_sampler  # noqa: E402
from loss.triplet import TripletLoss  # noqa: E402
from metric.retrieval import retrieval_metrics  # noqa: E402
from experiment.run_dir import write_text_atomic  # noqa: E402
from model.batchnorm import freeze_batchnorm  # noqa: E402
from model.bninception import BNInception  # noqa: E402
from model.checkpoint import read_weights_file  # noqa: E402

ROWS = ("train_fp32", "train_amp", "step_vs_cpu", "step_vs_cpu_tf32", "deterministic", "channels_last",
        "recall_vs_cpu", "eval", "torchrun", "end_to_end")
CHANNELS_LAST_TOLERANCE = 1e-4  # relative loss difference of the two memory layouts in IEEE float32
TORCHRUN_TOLERANCE = 1e-4  # relative weight difference of N > 1 processes (they sum gradients in another order)


@dataclass(frozen=True)
class Sizes:
    """How big each check is: ``image`` px, training ``batch`` for ``iters`` timed iterations, ..."""

    image: int
    batch: int
    iters: int
    step_batch: int
    eval_batch: int
    eval_batches: int
    recall_items: int
    classes: int
    per_class: int
    run_batch: int
    per_batch_class: int
    run_iters: int


FULL = Sizes(image=224, batch=128, iters=20, step_batch=32, eval_batch=128, eval_batches=20, recall_items=20000,
             classes=16, per_class=12, run_batch=32, per_batch_class=4, run_iters=4)
SMALL = Sizes(image=64, batch=8, iters=1, step_batch=8, eval_batch=8, eval_batches=1, recall_items=600,
              classes=8, per_class=4, run_batch=8, per_batch_class=2, run_iters=1)


@dataclass
class Row:
    """One line of the table: ``passed`` is None for a measurement, True/False for an equality check."""

    name: str
    value: float | None
    unit: str
    passed: bool | None
    detail: str
    seconds: float = 0.0


def he_initialised() -> dict:
    """BN-Inception's ImageNet-layout state with He-initialised convolutions (seed 0).

    torch's default initialisation gives every image nearly the same features
    (their distances are 0.2% of their norm), so any rounding difference turns
    into a large one of the loss; ImageNet weights, and these, do not.
    """
    torch.manual_seed(0)
    net = BNInception()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.state_dict()


def class_images(classes: int, per_class: int, side: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(classes * per_class, 3, side, side) uint8 images, a colour per class plus noise, and their labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    colours = torch.randint(0, 256, (classes, 3, 1, 1), generator=g)[labels]
    noise = torch.randint(-40, 41, (len(labels), 3, side, side), generator=g)
    return (colours + noise).clamp(0, 255).to(torch.uint8), labels


def make_cub_tree(root: Path, classes: int, per_class: int, side: int) -> Path:
    """``root/CUB_200_2011/images/NNN.Bird_N/*.jpg``: photo-like JPEGs, a colour gradient per class plus noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side * 3 // 4, 0:side]
    for c in range(1, classes + 1):
        a, b, d = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a, yy * b, (xx + yy) * d / 2], axis=-1) * 255 / side
        folder = root / "CUB_200_2011" / "images" / f"{c:03d}.Bird_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"Bird_{c}_{i:04d}.jpg", quality=90)
    return root


def network(device: torch.device, state: dict | None = None) -> torch.nn.Module:
    """The embedding model as run.py builds it on ``device`` (channels_last on CUDA), ``state`` loaded."""
    model = run.build_run_model(run.parse_args(["--no-pretrained", "--device", device.type]), device)
    if state is not None:
        model.load_state_dict(state)
    return model


def initial_state() -> dict:
    """The embedding model's state with the He-initialised backbone and a seeded head, on the CPU."""
    model = network(torch.device("cpu"))
    model.base.model.load_state_dict(he_initialised())
    torch.manual_seed(0)
    model.linear.reset_parameters()
    return model.state_dict()


def train_steps(model: torch.nn.Module, batches: list, sampler: str, amp: bool = False) -> float:
    """run.train_one_epoch over ``batches`` with Adam as run.py sets it; returns the mean triplet loss."""
    device = next(model.parameters()).device
    negatives = torch.Generator(device=device).manual_seed(1)
    criterion = TripletLoss(sampler=build_sampler(sampler, negatives))
    mdr = MDRLoss().to(device)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-4},
                                  {"params": mdr.parameters(), "lr": 1e-4}], weight_decay=1e-5)
    amp_dtype, scaler = amp_settings(amp, device)
    return run.train_one_epoch(model, batches, optimizer, criterion, mdr, 0.6, 0.01, amp_dtype=amp_dtype,
                               scaler=scaler, normalize=device_normalization("bninception"))


def training_rate(device: torch.device, sizes: Sizes, amp: bool) -> float:
    """Training images/s of BN-Inception on ``device`` (cudnn.benchmark on, TF32 as by default)."""
    configure_backends(device, deterministic=False)
    model = network(device)
    images, labels = class_images(sizes.batch // 4, 4, sizes.image)
    train_steps(model, [(images, labels)] * min(2, sizes.iters), "distance", amp)  # warm-up
    synchronize(device)
    start = time.perf_counter()
    train_steps(model, [(images, labels)] * sizes.iters, "distance", amp)
    synchronize(device)
    return sizes.batch * sizes.iters / (time.perf_counter() - start)


def check_training_speed(device: torch.device, sizes: Sizes) -> list[Row]:
    fp32 = training_rate(device, sizes, amp=False)
    amp = training_rate(device, sizes, amp=True)
    dtype = str(amp_settings(True, device)[0]).replace("torch.", "")
    where = f"batch {sizes.batch}, {sizes.image} px"
    return [Row("train_fp32", fp32, "images/s", None, where),
            Row("train_amp", amp, "images/s", None, f"{dtype}, {amp / fp32:.2f}x fp32, {where}")]






def one_step(device: torch.device, state: dict, batch: tuple, tf32: bool) -> dict:
    configure_backends(device, deterministic=False, tf32=tf32)
    model = network(device, state)
    train_steps(model, [batch], "hard")
    return {k: v.cpu() for k, v in model.state_dict().items()}


def check_step_against_cpu(device: torch.device, sizes: Sizes, tf32: bool) -> Row:
    """The updated weights of one step on ``device`` and on the CPU: their difference relative to the update."""
    before = initial_state()
    batch = class_images(sizes.step_batch // 4, 4, sizes.image, seed=1)
    here, cpu = one_step(device, before, batch, tf32), one_step(torch.device("cpu"), before, batch, tf32)
    update = {k: cpu[k] - before[k] for k in cpu if cpu[k].is_floating_point()}
    difference = {k: here[k] - cpu[k] for k in update}
    value = float(flat(difference).norm() / flat(update).norm())
    name = "step_vs_cpu_tf32" if tf32 else "step_vs_cpu"
    convolutions = "TF32" if tf32 else "IEEE float32"
    return Row(name, value, "of the update", None, f"{convolutions} convolutions on {device.type}, "
               f"weights differ by {relative(here, cpu):.2e} of their norm; batch {sizes.step_batch}")


def check_channels_last(device: torch.device, sizes: Sizes) -> Row:
    """The training loss (triplet with hard negatives + MDR) of one batch in both memory layouts, IEEE float32."""
    configure_backends(device, deterministic=False, tf32=False)
    images, labels = class_images(sizes.step_batch // 4, 4, sizes.image, seed=2)
    normalize = device_normalization("bninception")
    losses, embeddings, state = [], [], initial_state()
    for layout in (torch.channels_last, torch.contiguous_format):
        model = network(device, state).to(memory_format=layout)
        freeze_batchnorm(model.train())
        x = normalize(images.to(device)).contiguous(memory_format=layout)
        with torch.no_grad():
            embedding = model(x)
            loss = TripletLoss(sampler=build_sampler("hard"))(embedding, labels.to(device))
            losses.append(float(loss + MDRLoss().to(device).regularizer(embedding, 0.6, 0.01)))
        embeddings.append(embedding.double().cpu())
    (a, b), (e, f) = losses, embeddings
    value = abs(a - b) / abs(b)
    return Row("channels_last", value, "relative", value < CHANNELS_LAST_TOLERANCE,
               f"losses {a:.7g} and {b:.7g} (tolerance {CHANNELS_LAST_TOLERANCE:g}), embeddings differ by "
               f"{float((e - f).norm() / f.norm()):.1e}")


def clustered(n: int, dim: int = 512, per_class: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, dim) unit embeddings around one centre per class (Recall@1 of trained embeddings), (n,) labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(n, generator=g) // per_class
    centres = torch.randn(int(labels.max()) + 1, dim, generator=g)
    return torch.nn.functional.normalize(centres[labels] + 2.2 * torch.randn(n, dim, generator=g), dim=1), labels


def check_recall(device: torch.device, sizes: Sizes) -> Row:
    """Exact Recall@K on the device and on the CPU, self-retrieval and query -> gallery: equal."""
    ks = [1, 10, 100]
    emb, labels = clustered(sizes.recall_items)
    query, q_labels = clustered(sizes.recall_items // 2, seed=1)
    cases = {"self": (emb, labels, None, None), "query-gallery": (query, q_labels, emb, labels)}
    differ = []
    for name, tensors in cases.items():
        on_cpu = retrieval_metrics(*tensors, ks)
        on_device = retrieval_metrics(*(t.to(device) if t is not None else None for t in tensors), ks)
        if on_device != on_cpu:
            differ.append(f"{name}: {on_device} vs {on_cpu}")
    detail = "; ".join(differ) or f"{sizes.recall_items} items, Recall@{ks} identical in both protocols"
    return Row("recall_vs_cpu", float(len(differ)), "cases differing", not differ, detail)


def check_eval_speed(device: torch.device, sizes: Sizes) -> Row:
    configure_backends(device, deterministic=False)
    model = network(device)
    images, labels = class_images(sizes.eval_batch, 1, sizes.image)
    rate = extraction_rate(model, [(images, labels)] * sizes.eval_batches, device)
    return Row("eval", rate, "embeddings/s", None, f"batch {sizes.eval_batch}, {sizes.image} px")


@dataclass(frozen=True)
class Runs:
    """The generated tree and the run.py flags that every run of the checks shares."""

    folder: Path
    flags: list[str]

    def main(self, name: str, *flags: str) -> Path:
        """``run.py FLAGS --save-dir folder/name`` in this process; returns the run folder."""
        save_dir = self.folder / name
        run.main(run.parse_args(self.flags + ["--save-dir", str(save_dir), *flags]))
        return save_dir


def prepare_runs(folder: Path, device: torch.device, sizes: Sizes, workers: int, backbone: str) -> Runs:
    """The tree and flags of the run checks: BN-Inception from ``he_initialised`` weights, or ``backbone``
    from its random initialisation."""
    tree = make_cub_tree(folder / "data", sizes.classes, sizes.per_class, max(2 * sizes.image, 96))
    if backbone == "bninception":
        weights = folder / "bninception_he.pth"
        torch.save(he_initialised(), weights)
        start = ["--pretrained", str(weights)]
    else:
        start = ["--backbone", backbone, "--no-pretrained"]
    flags = ["--dataset", "cub200", "--data", str(tree), "--device", device.type, *start,
             "--image-size", str(sizes.image), "--batch", str(sizes.run_batch), "--num-image-per-class",
             str(sizes.per_batch_class), "--iter-per-epoch", str(sizes.run_iters), "--eval-batch", "32",
             "--workers", str(workers), "--lr", "5e-5", "--lambda-mdr", "0.6", "--nu-mdr", "0.01",
             "--recall", "1", "2", "4", "8", "--deterministic"]
    return Runs(folder, flags)


def last_weights(run_dir: Path) -> dict:
    return read_weights_file(run_dir / "last.pth")




def check_deterministic(runs: Runs) -> Row:
    first, second = (last_weights(runs.main(name, "--epochs", "2")) for name in ("plain", "plain_again"))
    same = identical(first, second)
    return Row("deterministic", relative(second, first), "relative", same,
               "two --deterministic runs of 2 epochs: " + ("identical weights" if same else "weights differ"))




def check_torchrun(runs: Runs, device: torch.device, nproc: int) -> Row:
    """torchrun with ``nproc`` processes against the plain run of check_deterministic."""
    save_dir = runs.folder / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(ROOT / "run.py"),
               *runs.flags, "--save-dir", str(save_dir), "--epochs", "2"]
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        return Row("torchrun", None, "", False, f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
    ours, plain = last_weights(save_dir), last_weights(runs.folder / "plain")
    difference = relative(ours, plain)
    backend = "no process group (world size 1)" if nproc == 1 else ("nccl" if device.type == "cuda" else "gloo")
    passed = identical(ours, plain) if nproc == 1 else difference < TORCHRUN_TOLERANCE
    return Row("torchrun", difference, "relative", passed, f"{nproc} process(es), {backend}, 2 epochs")


def check_end_to_end(runs: Runs) -> Row:
    """Cache, AMP, checkpoint and resume: 1 epoch then a resume to 2 equals 2 epochs uninterrupted."""
    cache = ["--cache-dir", str(runs.folder / "cache"), "--amp"]
    whole = runs.main("whole", *cache, "--epochs", "2")
    parted = runs.main("parted", *cache, "--epochs", "1")
    run.main(run.parse_args(["--resume", str(parted), "--epochs", "2"]))
    records = (parted / "metrics.jsonl").read_text().splitlines()
    missing = [name for name in ("best.pth", "last.pth", "checkpoint.pth", "result.txt", "config.json")
               if not (parted / name).is_file()]
    same = identical(last_weights(whole), last_weights(parted))
    problems = ([] if same else ["resumed weights differ"]) + [f"missing {m}" for m in missing]
    if [json.loads(r)["epoch"] for r in records][-2:] != [1, 2]:
        problems.append(f"metrics.jsonl epochs {[json.loads(r)['epoch'] for r in records]}")
    return Row("end_to_end", relative(last_weights(parted), last_weights(whole)), "relative", not problems,
               "; ".join(problems) or "cache, AMP, checkpoint, resume after epoch 1: identical weights")


def measured(name: str, check: Callable[[], Row | list[Row]]) -> list[Row]:
    """The rows of ``check``, or one FAILED row with the exception, so that the other checks still run."""
    start = time.perf_counter()
    try:
        rows = check()
    except Exception as exc:  # a device check reports every failure and goes on
        rows = Row(name, None, "", False, f"error: {type(exc).__name__}: {str(exc).strip()[:400]}")
    rows = rows if isinstance(rows, list) else [rows]
    for row in rows:
        row.seconds = (time.perf_counter() - start) / len(rows)
    return rows


def environment(device: torch.device, sizes: Sizes, run_backbone: str) -> dict:
    record = {"torch": torch.__version__, "device": device.type, "sizes": asdict(sizes), "run_backbone": run_backbone,
              "amp_dtype": str(amp_settings(True, device)[0]), "cpus": os.cpu_count()}
    if device.type == "cuda":
        record.update(name=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                      cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return record


def table(rows: list[Row]) -> str:
    lines = [f"{'check':<17} {'value':>12} {'unit':<16} {'result':<7} {'s':>5}  detail", "-" * 110]
    for row in rows:
        value = "-" if row.value is None else f"{row.value:12.4g}"
        result = {None: "-", True: "ok", False: "FAILED"}[row.passed]
        lines.append(f"{row.name:<17} {value:>12} {row.unit:<16} {result:<7} {row.seconds:5.0f}  {row.detail}")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for device_check.json (created)")
    p.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], default="auto")
    p.add_argument("--small", action="store_true", help="the small CPU sizes on any device")
    p.add_argument("--nproc", type=bounded_int(1), default=1, help="torchrun processes of the torchrun check")
    p.add_argument("--workers", type=bounded_int(0), default=min(8, os.cpu_count() or 1),
                   help="data loader processes of the runs")
    p.add_argument("--run-backbone", default="bninception", metavar="NAME",
                   help="backbone of the run checks (deterministic, torchrun, end_to_end); the other checks "
                        "always train BN-Inception (the CPU test passes a small timm model to stay fast)")
    return p


def checks(device: torch.device, sizes: Sizes, runs: Runs, nproc: int) -> dict[str, Callable[[], Row | list[Row]]]:
    """{first row name: the check}, in the order they run."""
    return {"train_fp32": lambda: check_training_speed(device, sizes),
            "step_vs_cpu": lambda: check_step_against_cpu(device, sizes, tf32=False),
            "step_vs_cpu_tf32": lambda: check_step_against_cpu(device, sizes, tf32=True),
            "deterministic": lambda: check_deterministic(runs),
            "channels_last": lambda: check_channels_last(device, sizes),
            "recall_vs_cpu": lambda: check_recall(device, sizes),
            "eval": lambda: check_eval_speed(device, sizes),
            "torchrun": lambda: check_torchrun(runs, device, nproc),
            "end_to_end": lambda: check_end_to_end(runs)}


def write_report(out: Path, device: torch.device, sizes: Sizes, rows: list[Row], seconds: float,
                 run_backbone: str) -> dict:
    """DIR/device_check.json with the rows so far (rewritten after each check, so a killed run keeps them)."""
    report = {"environment": environment(device, sizes, run_backbone), "seconds": seconds, "rows": [asdict(row) for row in rows]}
    write_text_atomic(out / "device_check.json", json.dumps(report, indent=2) + "\n")
    return report


def main(args: argparse.Namespace) -> int:
    # cuBLAS reads this once, when it starts: the --deterministic runs of this process need it from the first call
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = select_device(args.device)
    sizes = FULL if device.type == "cuda" and not args.small else SMALL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = prepare_runs(Path(tmp), device, sizes, args.workers, args.run_backbone)
        for name, check in checks(device, sizes, runs, args.nproc).items():
            rows += measured(name, check)
            print(f"[device_check] {table(rows).splitlines()[-1]}", flush=True)
            report = write_report(out, device, sizes, rows, time.perf_counter() - started, args.run_backbone)
    configure_backends(device, deterministic=False)
    print(f"\ntorch {report['environment']['torch']} on {report['environment'].get('name', device.type)}, "
          f"{report['seconds']:.0f} s\n{table(rows)}\nwritten to {out / 'device_check.json'}")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
