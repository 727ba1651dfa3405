"""torchrun gives the single-process run: the same steps, weights, MDR state and Recall@K, on 2 gloo processes."""
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import run
from bench.loopback import free_port
from bench.weights_diff import identical, relative
from dataset import CUB200
from dataset.sampler import PKSampler, SeededShards, augmentation_seed
from dataset.transforms import build_transforms, device_normalization
from experiment import distributed
from errors import UserError
from experiment.distributed import Context
from loss.mdr import MDRLoss
from loss.sampler import build_sampler
from loss.triplet import TripletLoss
from fill import fill_model
from minidata import make_cub
import model as model_package
from model import build_model
from model.bninception import BNInceptionTrunk
from small_run import BACKBONE

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--batch", "8", "--num-image-per-class", "2",
         "--iter-per-epoch", "2", "--eval-batch", "4", "--backbone", BACKBONE, "--embedding-size", "16",
         "--lr", "5e-5", "--lr-decay-epochs", "5", "--lambda-mdr", "0.6", "--nu-mdr", "0.01"]
# The runs use the authors' CUB learning rate. Adam moves a weight by about lr whatever the size of its
# gradient, so a gradient at rounding level (the ranks sum their halves in another order) can move it
# either way: after 4 steps of ResNet-18 at lr 1e-3 the weights differed by 6e-4 of their norm, at 5e-5 by
# 5e-6; the small backbone's differ by 1.5e-5 at 5e-5.
CASES = {"triplet": (False, 0.0, 0.0), "l2norm": (True, 0.0, 0.0), "mdr": (False, 0.6, 0.01)}




def loopback_env(port: int) -> dict:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo"}


def test_shards_cover_every_item_once_in_order():
    for n in (0, 1, 7, 15, 16):
        for world in (1, 2, 3):
            ranges = [distributed.shard_range(n, Context(r, world)) for r in range(world)]
            assert [i for r in ranges for i in r] == list(range(n))
            assert max(map(len, ranges)) - min(map(len, ranges)) <= 1


def test_every_rank_loads_its_slice_with_the_global_positions_seeds():
    labels = [i % 6 for i in range(36)]
    whole = list(SeededShards(PKSampler(labels, 12, 2, 3, seed=4), seed=4))
    halves = [list(SeededShards(PKSampler(labels, 12, 2, 3, seed=4), seed=4, rank=r, world=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole
    assert whole[1][5] == (whole[1][5][0], augmentation_seed(4, 0, 1, 5))
    with pytest.raises(run.UserError, match="batch of 10 images does not split evenly over 3"):
        SeededShards(PKSampler(labels, 10, 2, 1, seed=4), seed=4, rank=0, world=3)
    with pytest.raises(run.UserError, match="batch of 6 images does not split evenly over 4"):
        SeededShards(PKSampler(labels, 12, 1, 1, seed=4), seed=4, rank=0, world=4)


def test_a_samples_augmentation_depends_on_its_seed_only(tmp_path):
    train_tf, _ = build_transforms("resnet18", 64)
    ds = CUB200(make_cub(tmp_path), "train", transform=train_tf)
    torch.manual_seed(0)
    a = ds[(3, 1234)][0]
    torch.manual_seed(99)
    state = torch.get_rng_state()
    b = ds[(3, 1234)][0]
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, ds[(3, 1235)][0])
    torch.manual_seed(1234)
    assert torch.equal(a, ds[3][0])  # the very crop torch.manual_seed(seed) gives


def _step(case: str, batches: list, ctx: Context, backbone: str = "resnet18", filled: bool = False,
          trace: dict | None = None):
    """Training steps of ``case`` on this rank's slice of each (images, labels) batch; returns (loss, model, mdr).

    ``filled`` gives the model the reference fill (tests/fill.py) instead of torch's initialisation;
    ``trace``, if given, receives each step's triplet loss ("losses") and the state after the first ("first").
    """
    l2norm, lam, nu = CASES[case]
    torch.manual_seed(0)
    model = build_model(backbone, 16, l2norm, pretrained=False)
    if filled:
        fill_model(model)
    mdr = MDRLoss()
    criterion = TripletLoss(sampler=build_sampler("distance", torch.Generator().manual_seed(3)))
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3},
                                  {"params": mdr.parameters(), "lr": 1e-3}], weight_decay=1e-5)
    trained = torch.nn.parallel.DistributedDataParallel(model) if ctx.active else model
    parts = []
    for images, labels in batches:
        size = len(images) // ctx.world
        part = slice(ctx.rank * size, (ctx.rank + 1) * size)
        parts.append((images[part], labels[part]))
    def record(iteration: int, base: float, reg: float, lr: float) -> None:
        if trace is not None:
            trace.setdefault("losses", []).append(base)
            trace.setdefault("first", {k: v.clone() for k, v in model.state_dict().items()})

    loss = run.train_one_epoch(trained, parts, optimizer, criterion, mdr, lam, nu, ctx=ctx, on_step=record,
                               normalize=device_normalization(backbone))
    return loss, model, mdr


def _two_batches() -> list:
    """Two batches of 8 uint8 64 px images, each a colour of its own plus noise, as run.py's loaders give them.

    DDP finds a parameter that got no gradient when the second step starts.
    """
    g = torch.Generator().manual_seed(6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

    def images() -> torch.Tensor:
        colour = torch.randint(0, 256, (8, 3, 1, 1), generator=g)
        return (colour + torch.randint(-30, 31, (8, 3, 64, 64), generator=g)).clamp(0, 255).to(torch.uint8)

    return [(images(), labels), (images(), labels + 4)]


def _one_step_jobs(images, labels) -> dict:
    return {case: (case, "resnet18", [(images, labels)], False) for case in CASES}


OTHER_BACKBONES = ("bninception", "timm:resnet10t")


def _two_step_jobs() -> dict:
    """Two steps from the reference fill: torch's initialisation of BN-Inception gives every 64 px image nearly
    the same features (mean distance 0.2% of the norm), so the head's division by the mean distance turns
    the ranks' other summation order into 1e-3 of the loss; the fill's, like ImageNet weights, does not."""
    return {backbone: ("mdr", backbone, _two_batches(), True) for backbone in OTHER_BACKBONES}


def _rank_steps(rank: int, world: int, port: int, out: str, jobs: dict) -> None:
    """Run every job ({name: (case, backbone, batches, filled)}) on this rank; its results go to ``out.RANK``."""
    torch.set_num_threads(1)  # two processes of several threads each share the cores: 10x slower on a loaded machine
    os.environ.update(loopback_env(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name, (case, backbone, batches, filled) in jobs.items():
            trace: dict = {}
            loss, model, mdr = _step(case, batches, Context(rank, world), backbone, filled, trace)
            results[name] = {"loss": loss, "model": model.state_dict(), "mdr": mdr.state_dict(), **trace}
        torch.save(results, f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def _on_two_processes(tmp_path: Path, jobs: dict) -> list[dict]:
    """Each job's results on rank 0 and rank 1 of 2 gloo processes."""
    out = str(tmp_path / "step")
    mp.spawn(_rank_steps, args=(2, free_port(), out, jobs), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1)]






def test_one_step_on_two_processes_equals_one_process(tmp_path):
    torch.manual_seed(5)
    images, labels = torch.randn(8, 3, 64, 64), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ranks = _on_two_processes(tmp_path, _one_step_jobs(images, labels))
    for case in CASES:
        loss, model, mdr = _step(case, [(images, labels)], Context())
        one = model.state_dict()
        before = build_model("resnet18", 16, CASES[case][0], pretrained=False).state_dict()
        assert ranks[0][case]["loss"] == pytest.approx(loss, rel=1e-5), case
        assert relative(ranks[0][case]["model"], one) < 1e-5, case
        # a missing or doubled world-size factor would scale the update of every weight
        update = {k: one[k] - before[k] for k in one if one[k].is_floating_point()}
        update_2 = {k: ranks[0][case]["model"][k] - before[k] for k in update}
        assert relative(update_2, update) < 1e-3, case
        for key, value in ranks[0][case]["mdr"].items():
            assert torch.equal(value, ranks[1][case]["mdr"][key]), (case, key)
            assert torch.allclose(value.float(), mdr.state_dict()[key].float(), rtol=1e-5), (case, key)


def test_two_steps_of_the_default_backbone_and_of_a_timm_model_on_two_processes_equal_one_process(tmp_path):
    """BN-Inception at 64 px (it keeps an ImageNet classifier that forward never uses) and a timm model under DDP."""
    ranks = _on_two_processes(tmp_path, _two_step_jobs())
    for backbone in OTHER_BACKBONES:
        trace: dict = {}
        _, model, mdr = _step("mdr", _two_batches(), Context(), backbone, filled=True, trace=trace)
        initial = _step("mdr", [], Context(), backbone, filled=True)[1].state_dict()
        assert identical(ranks[0][backbone]["model"], ranks[1][backbone]["model"]), backbone  # averaged gradients
        for rank in ranks:
            assert rank[backbone]["losses"] == pytest.approx(trace["losses"], rel=1e-5), backbone
            for key, value in rank[backbone]["mdr"].items():
                assert torch.allclose(value.float(), mdr.state_dict()[key].float(), rtol=1e-5), (backbone, key)
        # Adam scales each weight's step by its own gradient's size, so weights whose gradients nearly cancel move
        # by rounding: one process with 1 thread instead of 2 differs from itself by 1e-3 of BN-Inception's first
        # update and 8e-3 after the second, as the ranks do; a gradient missing a rank's share differs by ~1.
        for after, one in (("first", trace["first"]), ("model", model.state_dict())):
            assert off_update(ranks[0][backbone][after], one, initial) < 5e-2, (backbone, after)


def off_update(state: dict, expected: dict, initial: dict) -> float:
    """How far ``state`` is from ``expected``, relative to the update from ``initial`` to ``expected``."""
    keys = [k for k in initial if initial[k].is_floating_point()]
    return relative({k: state[k] - initial[k] for k in keys}, {k: expected[k] - initial[k] for k in keys})




def test_the_frozen_imagenet_classifier_leaves_single_process_updates_bit_identical(monkeypatch):
    """BN-Inception's unused last_linear is frozen for DDP; with it trainable (as before) the steps are the same."""
    _, frozen, frozen_mdr = _step("mdr", _two_batches(), Context(), "bninception", filled=True)

    class Trainable(BNInceptionTrunk):
        def __init__(self):
            super().__init__()
            self.model.last_linear.requires_grad_(True)

    monkeypatch.setattr(model_package, "BNInceptionTrunk", Trainable)
    _, trainable, trainable_mdr = _step("mdr", _two_batches(), Context(), "bninception", filled=True)
    assert trainable.base.model.last_linear.weight.requires_grad
    assert not frozen.base.model.last_linear.weight.requires_grad
    assert identical(frozen.state_dict(), trainable.state_dict())
    assert identical(frozen_mdr.state_dict(), trainable_mdr.state_dict())


def _rank_prepares(rank: int, port: int, folder: str) -> None:
    """main_first with a collective timeout of 2 s (NCCL's is 10 minutes) while rank 0 prepares for 5 s."""
    os.environ.update(loopback_env(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=2))
    ctx, ready, outcome = Context(rank, 2), Path(folder) / "prepared", Path(folder) / f"outcome.{rank}"
    try:
        with distributed.main_first(ctx):
            if ctx.is_main:
                time.sleep(5)
                ready.write_text("done")
            seen = ready.read_text()
        try:
            with distributed.main_first(ctx):
                if ctx.is_main:
                    time.sleep(3)
                    raise UserError("the archive is damaged")
        except UserError as exc:
            outcome.write_text(f"{seen}; {type(exc).__name__}: {exc}")
        torch.distributed.barrier()  # the collectives after the preparation keep their own timeout
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_wait_for_rank_0s_preparation_longer_than_the_collective_timeout(tmp_path):
    """Rank 0 downloads, extracts and caches while the others wait: not bound by the collectives' timeout."""
    mp.spawn(_rank_prepares, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "outcome.0").read_text() == "done; UserError: the archive is damaged"
    assert (tmp_path / "outcome.1").read_text() == "done; SharedError: the archive is damaged"


def _torchrun(argv: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(ROOT / "run.py")] + argv
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_trains_the_single_process_model_and_resumes_across_world_sizes(tmp_path):
    root = make_cub(tmp_path / "data", classes=6, per_class=5)  # 15 test images: shards of 8 and 7
    common = SMALL + ["--data", str(root), "--workers", "0"]
    single, ddp, mixed = tmp_path / "single", tmp_path / "ddp", tmp_path / "mixed"
    run.main(run.parse_args(common + ["--save-dir", str(single), "--epochs", "2"]))

    done = _torchrun(common + ["--save-dir", str(ddp), "--epochs", "2"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Run folder:") == 1
    a, b = (torch.load(d / "last.pth", weights_only=True) for d in (single, ddp))
    assert a.keys() == b.keys() and relative(b, a) < 1e-4  # rounding: see the note on SMALL
    ca, cb = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (single, ddp))
    for key in ca["mdr"]:
        assert torch.allclose(ca["mdr"][key].float(), cb["mdr"][key].float(), rtol=1e-5), key
    ra, rb = _records(single), _records(ddp)
    assert [r["epoch"] for r in rb] == [0, 1, 2]
    assert [{k: v for k, v in r.items() if k.startswith("Recall@")} for r in ra] == \
           [{k: v for k, v in r.items() if k.startswith("Recall@")} for r in rb]
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())

    done = _torchrun(common + ["--save-dir", str(mixed), "--epochs", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    run.main(run.parse_args(common + ["--resume", str(mixed), "--epochs", "2"]))
    assert relative(torch.load(mixed / "last.pth", weights_only=True), a) < 1e-4
    assert [r["epoch"] for r in _records(mixed)] == [0, 1, 2]


def test_torchrun_writes_tensorboard_once_and_evaluates_as_one_process(tmp_path):
    """Rank 0 alone writes TensorBoard and --save-embeddings files; --mode eval shards and gathers like training."""
    root = make_cub(tmp_path / "data", classes=6, per_class=5)  # 15 test images: shards of 8 and 7
    common = SMALL + ["--data", str(root), "--workers", "0"]
    trained = tmp_path / "trained"
    done = _torchrun(common + ["--save-dir", str(trained), "--epochs", "1", "--tensorboard"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((trained / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes one
    evaluation = common + ["--mode", "eval", "--load", str(trained / "last.pth"), "--save-embeddings",
                           "--metrics", "recall", "map_r", "nmi"]
    single = run.main(run.parse_args(evaluation + ["--save-dir", str(tmp_path / "single")]))
    done = _torchrun(evaluation + ["--save-dir", str(tmp_path / "ddp")])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("metric ") == 1  # the table, printed by rank 0 alone
    for name, value in single.items():
        assert f"{name:<{max(map(len, single))}}  {value:9.4f}" in done.stdout
    a, b = (torch.load(tmp_path / d / "embeddings.pt", weights_only=True)["test"] for d in ("single", "ddp"))
    assert torch.equal(a["labels"], b["labels"]) and torch.allclose(a["embeddings"], b["embeddings"], atol=1e-6)


def test_the_same_seed_gives_the_same_weights_for_any_worker_count(tmp_path):
    root = make_cub(tmp_path / "data")
    for workers in ("0", "2"):
        run.main(run.parse_args(SMALL + ["--data", str(root), "--workers", workers, "--epochs", "1",
                                         "--save-dir", str(tmp_path / workers)]))
    a, b = (torch.load(tmp_path / w / "last.pth", weights_only=True) for w in ("0", "2"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_that_does_not_divide_is_an_error_naming_the_numbers(tmp_path):
    root = make_cub(tmp_path / "data")
    done = _torchrun(SMALL + ["--data", str(root), "--workers", "0", "--batch", "9", "--num-image-per-class", "3",
                              "--save-dir", str(tmp_path / "r"), "--epochs", "1"])
    assert done.returncode != 0
    assert done.stderr.count("--batch 9 does not split evenly over 2 processes") == 1, done.stderr[-3000:]


@pytest.mark.parametrize("fault", ["corrupt image", "diverged loss"])
def test_a_failure_on_any_rank_ends_the_run_with_its_message_and_no_hang(tmp_path, fault):
    root = make_cub(tmp_path / "data")
    argv = SMALL + ["--data", str(root), "--workers", "0", "--save-dir", str(tmp_path / "r"), "--epochs", "1"]
    if fault == "corrupt image":
        bad = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[1]  # a training image
        bad.write_bytes(b"not a jpeg")
        expected = bad.name
    else:
        argv += ["--lr", "1e30"]
        expected = "became non-finite"
    done = _torchrun(argv)
    assert done.returncode != 0 and expected in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], done.stderr[-3000:]  # the cause, once
    assert "[rank" not in done.stderr and "Connection closed" not in done.stderr, done.stderr[-3000:]
