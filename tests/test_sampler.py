"""The authors' batches seed for seed, fed to training by run.py; repeatable runs with --deterministic."""
import os
import random

import pytest
import torch

import run
from dataset import CUB200, InShop
from dataset.sampler import PKSampler
from experiment.device import configure_backends
from minidata import make_cub, make_inshop
from reference import load
from small_run import SMALL as SMALL_RUN

CASES = load("sampler")


@pytest.mark.parametrize("case", CASES, ids=[f"seed{c['seed']}-batch{c['batch']}" for c in CASES])
def test_two_epochs_equal_the_originals_batches(case):
    sampler = PKSampler(case["labels"], case["batch"], case["m"], case["iters"], seed=case["seed"],
                        class_order=case["class_order"])
    for expected in case["epochs"]:
        assert [list(b) for b in sampler] == [list(b) for b in expected]


def test_reference_cases_cover_a_non_sorted_class_order():
    assert any(c["class_order"] != sorted(c["class_order"]) for c in CASES)


def test_default_class_order_is_sorted_ids():
    case = next(c for c in CASES if c["class_order"] == sorted(c["class_order"]))
    a = PKSampler(case["labels"], case["batch"], case["m"], case["iters"], seed=case["seed"])
    assert [list(b) for b in a] == [list(b) for b in case["epochs"][0]]


def test_state_dict_resumes_the_stream():
    case = CASES[0]
    args = (case["labels"], case["batch"], case["m"], case["iters"])
    a = PKSampler(*args, seed=case["seed"], class_order=case["class_order"])
    list(a)
    b = PKSampler(*args, seed=99, class_order=case["class_order"])
    b.load_state_dict(a.state_dict())
    assert [list(x) for x in b] == [list(x) for x in case["epochs"][1]]


def test_sampler_does_not_touch_global_random():
    random.seed(3)
    before = random.getstate()
    list(PKSampler(CASES[0]["labels"], 16, 4, 3, seed=1))
    assert random.getstate() == before


def test_class_order_must_name_every_class_once():
    with pytest.raises(ValueError, match="each of the 3 class ids once"):
        PKSampler([0, 0, 1, 1, 2, 2], 4, 2, 1, class_order=[0, 1, 1])


def test_inshop_class_order_is_first_appearance_and_cub_is_sorted(tmp_path):
    root = make_inshop(tmp_path / "inshop", items=6, order=[3, 5, 1, 2, 6, 4])
    assert InShop(root, split="train").class_order == [3, 1, 2]
    cub = CUB200(make_cub(tmp_path / "cub"), split="train")
    assert cub.class_order == sorted(set(cub.labels))


SMALL = SMALL_RUN + ["--iter-per-epoch", "3", "--seed", "5"]


BUILD_DATASETS = run.build_datasets


class Stop(KeyboardInterrupt):
    """Raised by the recorder to interrupt a run part-way through an epoch."""


def _recording_run(argv, monkeypatch, seen: list, stop_after: int | None = None):
    """Run run.main, appending the train-set indices the loader fetches, batch by batch, to ``seen``."""
    build = BUILD_DATASETS

    def recording_build(args):
        train, evals = build(args)
        if train is not None:
            base = type(train)

            def getitem(self, index):
                if stop_after is not None and len(seen) >= stop_after:
                    raise Stop
                seen.append(index[0])  # (dataset index, augmentation seed)
                return base.__getitem__(self, index)

            train.__class__ = type("Recording" + base.__name__, (base,), {"__getitem__": getitem})
        return train, evals

    monkeypatch.setattr(run, "build_datasets", recording_build)
    return run.main(run.parse_args(argv))


def test_run_trains_on_the_samplers_batches_across_interrupt_and_resume(tmp_path, monkeypatch):
    root = make_inshop(tmp_path / "data", items=8, per_item=4, order=[4, 7, 2, 1, 8, 3, 6, 5])
    save = tmp_path / "run"
    argv = SMALL + ["--dataset", "inshop", "--data", str(root), "--save-dir", str(save), "--epochs", "2"]
    train = InShop(root, split="train")
    assert train.class_order == [4, 2, 1, 3]
    expected = PKSampler(train.labels, 8, 2, 3, seed=5, class_order=train.class_order)
    epoch1, epoch2 = ([i for batch in expected for i in batch] for _ in range(2))

    seen: list[int] = []
    with pytest.raises(run.Interrupted):
        _recording_run(argv, monkeypatch, seen, stop_after=len(epoch1) + 5)
    assert seen == epoch1 + epoch2[:5]
    resumed: list[int] = []
    _recording_run(argv + ["--resume", str(save)], monkeypatch, resumed)
    assert resumed == epoch2


@pytest.fixture
def restore_backends(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    configure_backends(torch.device("cpu"), deterministic=False)


def test_deterministic_flag_sets_what_it_should(restore_backends):
    configure_backends(torch.device("cuda"), deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    args = run.parse_args(["--deterministic"])
    configure_backends(torch.device("cuda"), args.deterministic)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_deterministic_run_repeats_its_weights(tmp_path, restore_backends):
    root = make_cub(tmp_path / "data")
    for name in ("a", "b"):
        run.main(run.parse_args(SMALL + [
            "--deterministic", "--lambda-mdr", "0.6", "--data", str(root), "--save-dir", str(tmp_path / name),
            "--epochs", "1"]))
        assert torch.are_deterministic_algorithms_enabled()
    a, b = (torch.load(tmp_path / n / "last.pth", weights_only=True) for n in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
