"""Training throughput: the data pipeline (authors' chain, uncached, cached) and training iterations.

    python bench/train_speed.py [--images 200] [--repeats 5] [--data-only]   # about 2 minutes on 2 CPU cores

Data pipeline: images/s of the train transform over the same generated 500x375
JPEG files, one process with one thread (per core), and with a 2-worker DataLoader
with persistent workers, as run.py builds it, in its steady state (after a warm-up
epoch), where the project's cached path gets (index, seed) samples, hands over uint8
crops and normalises each batch where the model is, as run.py does. Outputs of all
are checked to be identical for the same torch seeds.
Training: BN-Inception iterations on the current device: fp32, and AMP where CUDA
is present; then one epoch end to end through the cached loader. Evaluation:
BN-Inception embedding of uint8 batches, and from the two rates an estimate of
the share of an SOP-sized epoch (100 x 256 training images, 60,502 test images)
that goes to evaluation.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402
from dataset.image_list import ImageList  # noqa: E402
from dataset.sampler import PKSampler  # noqa: E402
from dataset.transforms import DeviceNormalize, authors_normalization  # noqa: E402
from dataset.transforms import build_transforms, device_normalization  # noqa: E402
from bench.timing import extraction_rate  # noqa: E402
from experiment.device import amp_settings, select_device, synchronize  # noqa: E402
from experiment.flags import bounded_int  # noqa: E402
from loss.mdr import MDRLoss  # noqa: E402
from loss.sampler import DistanceWeighted  # noqa: E402
from loss.triplet import TripletLoss  # noqa: E402
from model import build_model  # noqa: E402

SOP_TRAIN_PER_EPOCH = 100 * 256  # the authors' iter_per_epoch x batch on SOP
SOP_TEST = 60_502  # test images, embedded at every evaluation


def make_jpegs(folder: Path, count: int, classes: int = 20) -> list[tuple[str, int]]:
    """Photo-like 500x375 JPEGs: smooth colour gradients plus noise, quality 90."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    samples = []
    for i in range(count):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([xx * a / 2, yy * b / 1.5, (xx + yy) * c / 3.5], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        samples.append((str(path), i % classes))
    return samples


class AuthorsChain(torch.utils.data.Dataset):
    """The authors' per-sample work: decode, then torchvision's full train transform."""

    def __init__(self, samples, backbone: str):
        train, _ = build_transforms(backbone)
        self.samples = samples
        self.transform = T.Compose(train.transforms[:-1] + [authors_normalization(backbone)])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        with Image.open(self.samples[i][0]) as img:
            return self.transform(img.convert("RGB")), self.samples[i][1]


def per_core(dataset, passes: int = 3) -> float:
    """Images/s of indexing every sample in this process: the median of ``passes`` passes."""
    torch.manual_seed(0)
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        for i in range(len(dataset)):
            dataset[i]
        rates.append(len(dataset) / (time.perf_counter() - start))
    return float(np.median(rates))


def warm_loader(dataset, workers: int, seeded: bool = False) -> DataLoader:
    """A ``workers``-process DataLoader built as run.py builds it (persistent workers), batches of 32, after
    one warm-up epoch (start-up is not throughput). With ``seeded`` the samples are (index, seed) pairs, as
    run.py's ``SeededShards`` hands them out."""
    indices = [(i, i) for i in range(len(dataset))] if seeded else list(range(len(dataset)))
    batches = [indices[lo:lo + 32] for lo in range(0, len(indices), 32)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0)
    for _ in loader:
        pass
    return loader


def loader_rate(loader: DataLoader, normalize: DeviceNormalize | None = None, epochs: int = 5) -> float:
    """Images/s of ``epochs`` epochs of a warm loader; with ``normalize``, uint8 batches are normalised in
    this process, as on a CPU training device (a GPU does it off the CPU)."""
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for images, labels in loader:
            images = normalize(images) if normalize is not None else images
            count += len(labels)
    return count / (time.perf_counter() - start)


def compare_loaders(runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """{name: (median images/s, median ratio to the first run)} of ``runs`` ({name: () -> images/s}),
    measured in turn ``repeats`` times, so that a drift of this shared machine's speed hits all alike."""
    rates = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run_once in runs.items():
            rates[name].append(run_once())
    base = next(iter(rates.values()))
    return {name: (float(np.median(r)), float(np.median([x / b for x, b in zip(r, base)])))
            for name, r in rates.items()}


def identical(datasets, normalize: DeviceNormalize, seeds=(1, 2, 3)) -> bool:
    """Whether every dataset gives the same float image for the same seeds, uint8 ones after ``normalize``;
    the project's datasets (``ImageList``) also through their (index, seed) samples, as the timed loaders."""
    for seed in seeds:
        outs = []
        for ds in datasets:
            torch.manual_seed(seed)
            images = [ds[seed][0]] + ([ds[(seed, seed)][0]] if isinstance(ds, ImageList) else [])
            outs += [normalize(image[None])[0] if image.dtype == torch.uint8 else image for image in images]
        if not all(torch.equal(outs[0], o) for o in outs[1:]):
            return False
    return True


def loader_comparison(authors, cached, cached_uint8, normalize: DeviceNormalize, workers: int,
                      repeats: int) -> dict[str, tuple[float, float]]:
    """``compare_loaders`` of the authors' chain and the project's cached pipelines, each in its own warm loader."""
    loaders = [warm_loader(authors, workers), warm_loader(cached, workers), warm_loader(cached_uint8, workers, True)]
    return compare_loaders({
        "authors' chain": lambda: loader_rate(loaders[0]),
        "cached, float32 handed over": lambda: loader_rate(loaders[1]),
        "cached, uint8, per-sample seeds (run.py, GPU)": lambda: loader_rate(loaders[2]),
        "the same, normalised in this process (CPU)": lambda: loader_rate(loaders[2], normalize),
    }, repeats)


def train_speed(device: torch.device, batch: int, iters: int, amp: bool) -> float:
    model = build_model("bninception", pretrained=False).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    mdr = MDRLoss().to(device)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(mdr.parameters()), lr=1e-5, weight_decay=1e-5)
    amp_dtype, scaler = amp_settings(amp, device)
    images = torch.randn(batch, 3, 224, 224)
    labels = torch.arange(batch) // 4
    batches = [(images, labels)] * iters
    criterion = TripletLoss(sampler=DistanceWeighted())
    run.train_one_epoch(model, batches[:2], optimizer, criterion, mdr, 0.6, 0.01, amp_dtype=amp_dtype, scaler=scaler)
    synchronize(device)
    start = time.perf_counter()
    run.train_one_epoch(model, batches, optimizer, criterion, mdr, 0.6, 0.01, amp_dtype=amp_dtype, scaler=scaler)
    synchronize(device)
    return batch * iters / (time.perf_counter() - start)


def eval_speed(device: torch.device, batch: int, iters: int) -> float:
    """Images/s of ``experiment.extraction.extract`` (BN-Inception, eval mode) on random uint8 224x224 batches of ``batch``."""
    model = build_model("bninception", pretrained=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch, 3, 224, 224), dtype=torch.uint8)
    return extraction_rate(model, [(images, torch.arange(batch))] * iters, device)


def epoch_speed(device, samples, cache_dir, batch: int, iters: int, workers: int, amp: bool) -> float:
    train_tf, _ = build_transforms("bninception", uint8=True)
    dataset = ImageList(samples, train_tf, cache_dir=cache_dir, cache_name="bench-train")
    sampler = PKSampler(dataset.labels, batch, 4, iters, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
                        persistent_workers=workers > 0)
    model = build_model("bninception", pretrained=False).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    mdr = MDRLoss().to(device)
    optimizer = torch.optim.Adam(list(model.parameters()) + list(mdr.parameters()), lr=1e-5, weight_decay=1e-5)
    amp_dtype, scaler = amp_settings(amp, device)
    synchronize(device)
    start = time.perf_counter()
    run.train_one_epoch(model, loader, optimizer, TripletLoss(sampler=DistanceWeighted()), mdr, 0.6, 0.01,
                        amp_dtype=amp_dtype, scaler=scaler, normalize=device_normalization("bninception"))
    synchronize(device)
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=bounded_int(32), default=200,
                        help="generated JPEGs the pipelines run over (default 200)")
    parser.add_argument("--batch", type=bounded_int(2), default=None,
                        help="training batch (default 128 on CUDA, 16 on CPU)")
    parser.add_argument("--iters", type=bounded_int(1), default=None,
                        help="training iterations (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--workers", type=bounded_int(0), default=min(8, os.cpu_count() or 1),
                        help="loader workers of the end-to-end epoch (the DataLoader comparison uses min(2, CPUs))")
    parser.add_argument("--repeats", type=bounded_int(1), default=5, help="rounds of the DataLoader comparison")
    parser.add_argument("--data-only", action="store_true", help="stop after the data pipeline")
    args = parser.parse_args()
    device = select_device("auto")
    cuda = device.type == "cuda"
    batch = args.batch or (128 if cuda else 16)
    iters = args.iters or (20 if cuda else 3)
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}, {os.cpu_count()} CPUs")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        samples = make_jpegs(tmp / "img", args.images)
        train_tf, _ = build_transforms("bninception")
        authors = AuthorsChain(samples, "bninception")
        uncached = ImageList(samples, train_tf)
        start = time.perf_counter()
        cached = ImageList(samples, train_tf, cache_dir=tmp / "cache", cache_name="bench")
        build_s = time.perf_counter() - start
        cached_uint8 = ImageList(samples, build_transforms("bninception", uint8=True)[0], cache_dir=tmp / "cache",
                                 cache_name="bench")
        normalize = device_normalization("bninception")

        torch.set_num_threads(1)
        rates = {"authors' chain": per_core(authors), "project, uncached": per_core(uncached),
                 "project, cached": per_core(cached)}
        print(f"\nData pipeline, {args.images} JPEGs of 500x375, BN-Inception train transform, one core:")
        baseline = rates["authors' chain"]
        for name, rate in rates.items():
            print(f"  {name:<18} {rate:8.1f} images/s   {rate / baseline:5.2f}x the authors' chain")
        print(f"  outputs identical for the same torch seeds: "
              f"{identical([authors, uncached, cached, cached_uint8], normalize)}")
        print(f"  cache build: {build_s:.1f} s for {args.images} images ({args.images / build_s:.0f} images/s, "
              f"{os.cpu_count()} workers)")
        torch.set_num_threads(os.cpu_count() or 1)
        workers = min(2, os.cpu_count() or 1)
        results = loader_comparison(authors, cached, cached_uint8, normalize, workers, args.repeats)
        print(f"  DataLoader, {workers} workers, persistent, steady state; medians of {args.repeats} rounds:")
        for name, (rate, ratio) in results.items():
            print(f"    {name:<46} {rate:8.1f} images/s   {ratio:5.2f}x the authors' chain")
        if args.data_only:
            return

        print(f"\nTraining iterations, BN-Inception, batch {batch}, 224x224, {iters} iterations on {device}:")
        fp32 = train_speed(device, batch, iters, amp=False)
        print(f"  fp32: {fp32:8.1f} images/s")
        if cuda:
            amp = train_speed(device, batch, iters, amp=True)
            print(f"  AMP ({amp_settings(True, device)[0]}): {amp:8.1f} images/s   {amp / fp32:.2f}x fp32")
        eval_rate = eval_speed(device, batch, iters)
        train_s, eval_s = SOP_TRAIN_PER_EPOCH / fp32, SOP_TEST / eval_rate
        print(f"  evaluation (extract, eval mode): {eval_rate:8.1f} images/s")
        print(f"  SOP-sized epoch, estimated from these measured rates (network only, data loading excluded): "
              f"train {SOP_TRAIN_PER_EPOCH} images {train_s:.0f} s, evaluate {SOP_TEST} images {eval_s:.0f} s; "
              f"evaluation is {eval_s / (train_s + eval_s):.0%} of the epoch")
        e2e = epoch_speed(device, samples, tmp / "cache", batch, iters, args.workers, amp=cuda)
        print(f"  end to end through the cached loader ({args.workers} workers{', AMP' if cuda else ''}): "
              f"{e2e:8.1f} images/s")


if __name__ == "__main__":
    main()
