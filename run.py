"""Train and evaluate Triplet, Triplet+L2Norm and Triplet+MDR exactly as the authors' code does.

    python run.py --dataset cub200 --lr 5e-5 --recall 1 2 4 8 --lambda-mdr 0.6 --nu-mdr 0.01
    python run.py --mode eval --dataset cub200 --load cub200.pth --recall 1 2 4 8
"""
import argparse
import contextlib
import math
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dataset import DATASETS
from dataset.image_list import own_positions
from dataset.sampler import PKSampler, SeededShards
from dataset.transforms import DeviceNormalize, build_transforms, device_normalization
from errors import UserError
from experiment import distributed
from experiment.config import record_run
from experiment.device import amp_settings, configure_backends, seed_everything, select_device, to_device
from experiment.distributed import Context
from experiment.extraction import extract
from experiment.flags import parse_args
from experiment.resume import adopt_saved_flags, check_resume, run_flags
from experiment.rng import rng_state, set_rng_state
from experiment.run_dir import (claim_run_dir, read_checkpoint, resume_checkpoint, save_run_file, selection_key,
                                upgraded_checkpoint, write_outputs, write_text_atomic)
from experiment.tensorboard import TensorBoardLog
from experiment.trained_model import DATA_FLAGS, MODEL_FLAGS, adopt_flags_of_weights
from experiment.validation import prefixed, split_validation, val_selected_epoch
from loss.criterion import build_criterion, check_criterion, loss_param_groups
from loss.mdr import MDRLoss, level_names
from metric.nmi import clustering_metrics
from metric.per_class import per_class_csv
from metric.retrieval import retrieval_metrics
from model import build_model
from model.batchnorm import freeze_batchnorm
from model.checkpoint import load_model_weights, save_atomic
from tools.plot import check_plotting, plot_run, save_embedding_sample
from tools.retrievals import save_retrieval_grid

class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM during training; the message says how to resume, ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                    mdr: MDRLoss, lambda_mdr: float = 0.0, nu_mdr: float = 0.0, epoch: int = 0,
                    stats: dict | None = None, amp_dtype: torch.dtype | None = None,
                    scaler: "torch.amp.GradScaler | None" = None, ctx: Context = Context(),
                    on_step: Callable[[int, float, float, float], None] | None = None,
                    normalize: DeviceNormalize | None = None, loss_name: str = "triplet",
                    loss_args: Sequence[str] = ()) -> float:
    """One epoch of the authors' loop; returns the mean triplet loss.

    ``stats``, if given, receives the epoch's mean regulariser as "reg_loss".
    ``amp_dtype`` runs the network under autocast; the embeddings, the losses
    and the MDR statistics stay float32. ``scaler`` scales fp16 gradients.
    Under torchrun (``ctx``), ``model`` is the DDP-wrapped model and each rank
    holds a slice of the batch: the linear outputs and labels of all ranks are
    gathered, and the head's scaling, the base loss and MDR see the whole batch.
    ``on_step``, if given, is called after each step with (iteration, base
    loss, MDR term, learning rate of the first parameter group). ``normalize``
    turns uint8 batches into the network's float input on the device.
    ``loss_name`` and ``loss_args`` (--loss, --loss-args) name the base loss in errors.

    Per batch: embeddings in training mode with every BatchNorm frozen, loss =
    triplet + lambda * MDR + nu * sum(levels^2) (the MDR statistics update on
    every step, whatever lambda is), then zero_grad, backward, step.
    """
    device = next(model.parameters()).device
    model.train()
    freeze_batchnorm(model)
    losses, regs = [], []
    progress = tqdm(loader, ncols=80, disable=not ctx.is_main)
    for iteration, (images, labels) in enumerate(progress):
        images, labels = to_device(images, device, normalize), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            embedding = model(images, finish=not ctx.active)
        if ctx.active:
            embedding = model.module.finish(distributed.gather_batch(embedding.float(), ctx))
            labels = distributed.gather_rows(labels, ctx)
        embedding = embedding.float()
        where = f"at epoch {epoch}, iteration {iteration}; the last good checkpoint is kept"
        if not torch.isfinite(embedding).all():
            raise NonFiniteLoss(f"the network's embeddings became non-finite {where}; the weights diverged: lower "
                                f"--lr (now {optimizer.param_groups[0]['lr']:g})")
        loss_triplet = criterion(embedding, labels)
        loss_mdr = mdr.regularizer(embedding, lambda_mdr, nu_mdr)
        loss = loss_triplet + loss_mdr
        if not torch.isfinite(loss):
            raise NonFiniteLoss(non_finite_advice(loss_triplet.item(), loss_mdr.item(), where, loss_name, loss_args))
        optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        base, reg = loss_triplet.item(), loss_mdr.item()  # one device sync each per step
        if on_step is not None:
            on_step(iteration, base, reg, optimizer.param_groups[0]["lr"])
        progress.set_description("[Train][Epoch %d] Loss: %.5f Reg: %.5f" % (epoch, base, reg))
        losses.append(base)
        regs.append(reg)
    mean = float(torch.tensor(losses).mean()) if losses else float("nan")
    if stats is not None:
        stats["reg_loss"] = float(torch.tensor(regs).mean()) if regs else float("nan")
    print("[Epoch %d] Loss: %.5f\n" % (epoch, mean))
    return mean


def non_finite_advice(base: float, regularizer: float, where: str, loss_name: str = "triplet",
                      loss_args: Sequence[str] = ()) -> str:
    """The message for a non-finite loss from finite embeddings, naming the term that overflowed and, for
    the base loss, the --loss-args that may have made it so."""
    if not math.isfinite(regularizer):
        return (f"the MDR term became non-finite ({regularizer}) {where}; its levels diverged: lower --lambda-mdr, "
                "--nu-mdr or --lr")
    if loss_args:
        return (f"the {loss_name} loss became non-finite ({base}) {where}, with --loss-args {' '.join(loss_args)}: "
                "a value that divides by zero or overflows (a temperature of 0, a huge margin) does this; change "
                "it, or drop --loss-args for the library's defaults")
    return f"the {loss_name} loss became non-finite ({base}) {where}; check the data and lower --lr"


def evaluate(model: nn.Module, loaders: dict[str, DataLoader], ks: list[int], epoch: int = 0,
             metrics: Iterable[str] = ("recall",), keep: dict | None = None,
             ctx: Context = Context(), normalize: DeviceNormalize | None = None,
             own: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@K (percent) and the other requested metrics on the test split, or query -> gallery.

    ``loaders`` holds "test", or "query" and "gallery"; ``own`` (Q,) is the gallery index of each query's own
    image, -1 for none (``own_positions``). Returns {"Recall@K": ..., "MAP@R": ...}.
    ``keep``, if given, receives {split: (embeddings, labels)}. Under torchrun
    every rank embeds its shard, and rank 0 computes the metrics for all.
    """
    embedded = {name: extract(model, loader, f"[Eval][Epoch {epoch}] {name}", ctx, normalize)
                for name, loader in loaders.items()}
    if keep is not None:
        keep.update(embedded)
    return distributed.on_main(ctx, lambda: compute_metrics(embedded, ks, epoch, metrics, own))


def compute_metrics(embedded: dict, ks: list[int], epoch: int, metrics: Iterable[str],
                    own: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics of {split: ((N, D) embeddings, (N,) labels)}, printed; percent. A query never retrieves
    its ``own`` gallery item."""
    if "query" in embedded:
        (query, q_labels), (gallery, g_labels) = embedded["query"], embedded["gallery"]
        results = retrieval_metrics(query, q_labels, gallery, g_labels, ks, ("recall", *metrics), own=own)
        clusters = (query, q_labels)
    else:
        emb, labels = embedded["test"]
        results = retrieval_metrics(emb, labels, None, None, ks, ("recall", *metrics))
        clusters = (emb, labels)
    if {"nmi", "ami"} & set(metrics):
        results.update(clustering_metrics(*clusters, metrics))
    for k in ks:
        print("[Epoch %d] Recall@%d: [%.4f]\n" % (epoch, k, results[f"Recall@{k}"]))
    for name, value in results.items():
        if not name.startswith("Recall@"):
            print("[Epoch %d] %s: [%.4f]\n" % (epoch, name, value))
    return results


def build_datasets(args: argparse.Namespace) -> tuple:
    """(train set, {"test": ...} or {"query": ..., "gallery": ...}, as the dataset says, and "val" when training
    validates) with the authors' transforms, ending in uint8 tensors that ``device_normalization`` finishes on
    the device."""
    train_tf, test_tf = build_transforms(args.backbone, args.image_size, uint8=True)
    cls = DATASETS[args.dataset]
    kwargs = {"download": args.download, "cache_dir": args.cache_dir, "cache_workers": args.workers}
    if args.dataset in ("folder", "csv"):
        kwargs["train_classes"] = args.train_classes
    eval_splits = cls.evaluation_splits(args.data)
    train = cls(args.data, split="train", transform=train_tf, **kwargs) if args.mode == "train" else None
    evals = {s: cls(args.data, split=s, transform=test_tf, **kwargs) for s in eval_splits if s != "val"}
    if train is not None:
        own_val = cls(args.data, split="val", transform=test_tf, **kwargs) if "val" in eval_splits else None
        train, val = split_validation(args, train, lambda: cls(args.data, split="train", transform=test_tf,
                                                                **{**kwargs, "cache_dir": None}), own_val)
        evals.update({"val": val} if val is not None else {})
    return train, evals


def build_loaders(args: argparse.Namespace, train_set, eval_sets: dict, device: torch.device,
                  ctx: Context = Context()):
    """(train loader or None, {split: eval loader}); under torchrun each rank loads its share."""
    pin = device.type == "cuda"
    common = {"num_workers": args.workers, "pin_memory": pin, "persistent_workers": args.workers > 0}
    train_loader = None
    if train_set is not None:
        sampler = PKSampler(train_set.labels, args.batch, args.num_image_per_class, args.iter_per_epoch,
                            seed=args.seed, class_order=train_set.class_order)
        shards = SeededShards(sampler, args.seed, ctx.rank, ctx.world)
        train_loader = DataLoader(train_set, batch_sampler=shards, **common)
    eval_loaders = {name: DataLoader(Subset(ds, distributed.shard_range(len(ds), ctx)) if ctx.active else ds,
                                     batch_size=args.eval_batch, shuffle=False, **common)
                    for name, ds in eval_sets.items()}
    return train_loader, eval_loaders


def print_table(results: dict[str, float]) -> None:
    width = max(len(name) for name in results)
    print("\n".join([f"{'metric':<{width}}  value (%)", "-" * (width + 11)]
                    + [f"{name:<{width}}  {value:9.4f}" for name, value in results.items()]))


def eval_metrics(args: argparse.Namespace) -> list[str]:
    """The metrics each test evaluation computes: --metrics, and "per_class" with --per-class."""
    return list(args.metrics) + (["per_class"] if args.per_class else [])


def finish_eval(args: argparse.Namespace, embedded: dict, eval_sets: dict, save_dir: Path, weights: str) -> None:
    """The optional outputs of an evaluation: embeddings file, per-class metrics and retrieval grid.

    ``weights`` names the model evaluated in the grid's title, e.g. "last.pth (epoch 100)".
    """
    if not (args.save_embeddings or args.save_retrievals or args.per_class):
        return
    save_dir.mkdir(parents=True, exist_ok=True)
    if args.save_embeddings:
        save_atomic({name: {"embeddings": e.cpu(), "labels": l.cpu()} for name, (e, l) in embedded.items()},
                    save_dir / "embeddings.pt")
        print(f"Embeddings written to {save_dir / 'embeddings.pt'}")
    query_name = "query" if "query" in embedded else "test"
    gallery_name = "gallery" if "gallery" in embedded else "test"
    split = "test" if query_name == gallery_name else "query -> gallery"
    if args.per_class:
        gallery = (None, None) if gallery_name == query_name else embedded[gallery_name]
        write_text_atomic(save_dir / "per_class.csv", per_class_csv(*embedded[query_name], *gallery, args.recall,
                                                                    "map_r" in args.metrics, own_positions(eval_sets)))
        print(f"Per-class metrics written to {save_dir / 'per_class.csv'}")
    if args.save_retrievals:
        path = save_retrieval_grid(embedded[query_name], eval_sets[query_name].samples, embedded[gallery_name],
                                   eval_sets[gallery_name].samples, args.save_retrievals,
                                   save_dir / "retrievals.png", exclude_self=query_name == gallery_name,
                                   own=own_positions(eval_sets), worst=args.worst,
                                   shows=f"{args.dataset} {split} split, {weights}")
        print(f"Retrieval grid written to {path}")


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (in a claimed run folder) or evaluate, as ``args`` say; returns the last results.

    Under torchrun every rank runs this; rank 0 claims the folder and writes every file.
    """
    ctx = distributed.from_environment()
    resumed = read_checkpoint(resume_checkpoint(args.resume)) if args.resume is not None else None
    if resumed is not None:
        adopt_saved_flags(args, resumed)
    print(f"Seed: {args.seed}")
    seed_everything(args.seed)
    device = distributed.device_for(ctx, select_device(args.device))
    configure_backends(device, args.deterministic, args.tf32)
    if args.batch % ctx.world:
        raise distributed.SharedError(f"--batch {args.batch} does not split evenly over {ctx.world} processes; "
                                      f"use a multiple of {ctx.world}")
    with distributed.process_group(ctx, device), contextlib.ExitStack() as stack:
        if args.mode == "eval":
            return evaluate_only(args, device, ctx)
        if args.resume is None:  # a resume's --loss-args are the run's own: the flag check refuses others
            distributed.on_main(ctx, lambda: check_criterion(args))
        if args.plot:
            check_plotting()
        save_dir = distributed.on_main(ctx, lambda: stack.enter_context(
            claim_run_dir(args.save_dir, args.resume, args.overwrite)))
        print(f"Run folder: {save_dir}")
        return train(args, device, save_dir, ctx, resumed)


def build_run_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The embedding model on ``device``: ImageNet-initialised unless --load, --resume or --no-pretrained."""
    pretrained = args.pretrained if args.load is None and args.resume is None else False
    model = build_model(args.backbone, args.embedding_size, args.l2norm, pretrained).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if args.load is not None and args.resume is None:
        load_model_weights(model, args.load)
        print("Loaded Model from %s" % args.load)
    return model


def build_data(args: argparse.Namespace, device: torch.device, ctx: Context = Context()):
    """(train set, eval sets, train loader, eval loaders), with their sizes printed.

    Rank 0 downloads, extracts and caches first; the other ranks then read the same files.
    """
    with distributed.main_first(ctx):
        train_set, eval_sets = build_datasets(args)
    if train_set is not None:
        print("Number of images in Training Set: %d" % len(train_set))
    for name, ds in eval_sets.items():
        print("Number of images in %s set: %d" % (name.capitalize(), len(ds)))
    return (train_set, eval_sets) + build_loaders(args, train_set, eval_sets, device, ctx)


def evaluate_only(args: argparse.Namespace, device: torch.device, ctx: Context = Context()) -> dict[str, float]:
    """--mode eval: evaluate --load (or, saying so, the initial model) and write the requested extras.

    The model and data flags not given are read from the run that wrote --load, when it is one of ours.
    """
    if args.load is None:
        print("No --load given: evaluating the initial model ("
              + ("ImageNet backbone" if args.pretrained else "random backbone") + ", random embedding head)")
    else:
        lines, _ = adopt_flags_of_weights(args, MODEL_FLAGS + DATA_FLAGS, "evaluating")
        for line in lines if ctx.is_main else []:
            print(line)
    model = build_run_model(args, device)
    _, eval_sets, _, eval_loaders = build_data(args, device, ctx)
    embedded: dict = {}
    normalize = device_normalization(args.backbone)
    results = evaluate(model, eval_loaders, args.recall, 0, eval_metrics(args), keep=embedded, ctx=ctx,
                       normalize=normalize, own=own_positions(eval_sets))
    print_table(results)
    if ctx.is_main and (args.save_embeddings or args.save_retrievals or args.per_class):
        with claim_run_dir(args.save_dir, None, args.overwrite) as save_dir:
            finish_eval(args, embedded, eval_sets, save_dir, args.load or "the initial model")
    return results


def checked_resume(state: dict, args: argparse.Namespace, save_dir: Path, ctx: Context) -> tuple[dict, bool]:
    """(the resumed checkpoint completed to this version's fields, whether it has epochs left).

    Rank 0 checks the flags; the data and weights are checked once loaded (``record_run``).
    """
    state = upgraded_checkpoint(state, save_dir, selection_key(args.recall))
    return state, distributed.on_main(ctx, lambda: check_resume(state, args, str(save_dir)))


def train(args: argparse.Namespace, device: torch.device, save_dir: Path, ctx: Context = Context(),
          resumed: dict | None = None) -> dict:
    """The authors' training run in ``save_dir``: epoch 0 evaluation, then train and evaluate every epoch.

    At the end of each epoch the checkpoint is written first; best.pth,
    last.pth, metrics.jsonl and result.txt are then derived from it, and a
    resume derives them again, so a kill at any moment loses nothing. A resume
    writes nothing before its flags, data and weights have passed the checks.
    Under torchrun the model is wrapped in DDP and only rank 0 writes.
    """
    if resumed is not None:
        resumed, unfinished = checked_resume(resumed, args, save_dir, ctx)
        if not unfinished:
            distributed.on_main(ctx, lambda: write_outputs(save_dir, resumed))
            return resumed["results"]
    model = build_run_model(args, device)
    train_set, eval_sets, train_loader, eval_loaders = build_data(args, device, ctx)
    distributed.on_main(ctx, lambda: record_run(args, device, save_dir, {"train": train_set, **eval_sets},
                                                resuming=resumed is not None))
    if resumed is not None:
        distributed.on_main(ctx, lambda: write_outputs(save_dir, resumed))
    val_loaders = {"test": eval_loaders.pop("val")} if "val" in eval_loaders else {}
    negatives = torch.Generator(device=device).manual_seed(args.seed)
    criterion, loss_hparams = build_criterion(args, max(train_set.labels) + 1, negatives)
    criterion = criterion.to(device)
    mdr = MDRLoss(args.mdr_levels, args.mdr_momentum).to(device)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": args.lr},
                                  {"params": mdr.parameters(), "lr": args.lr}]
                                 + loss_param_groups(criterion, args.lr, args.loss_lr_mult), weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_decay_epochs, args.lr_decay_gamma)
    sampler = train_loader.batch_sampler
    amp_dtype, scaler = amp_settings(args.amp, device)
    trained = DistributedDataParallel(model, forward_sync_buffers=False) if ctx.active else model
    tb = TensorBoardLog(save_dir / "tb", args.iter_per_epoch) if args.tensorboard and ctx.is_main else None
    embedded: dict = {}
    normalize = device_normalization(args.backbone)
    own = own_positions(eval_sets)

    def checkpoint(epoch: int, results: dict, best: float, best_epoch: int, history: list) -> None:
        state = {"model": model.state_dict(), "mdr": mdr.state_dict(), "loss": criterion.state_dict(),
                 "loss_hparams": loss_hparams, "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
                 "key": key, "results": results, "history": history, "rng": rng_state(sampler, negatives),
                 "args": run_flags(args), "best_val_epoch": val_selected_epoch(history, key),
                 "scaler": scaler.state_dict() if scaler is not None else {}}
        if ctx.is_main:
            save_run_file(state, save_dir / "checkpoint.pth")
            write_outputs(save_dir, state)

    key = selection_key(args.recall)
    if resumed is not None:
        load_model_weights(model, resume_checkpoint(args.resume), resumed)
        mdr.load_state_dict(resumed["mdr"])
        criterion.load_state_dict(resumed.get("loss", {}))  # runs from before --loss have the stateless triplet
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        set_rng_state(resumed["rng"], sampler, negatives)
        if scaler is not None and resumed.get("scaler"):  # fp16 before and now: the loss scale continues
            scaler.load_state_dict(resumed["scaler"])
        start, results, best, best_epoch = (resumed["epoch"] + 1, resumed["results"], resumed["best"],
                                            resumed["best_epoch"])
        key, history = resumed["key"], resumed["history"]
        print(f"Resumed from {save_dir / 'checkpoint.pth'} after epoch {resumed['epoch']}")
    else:
        results = evaluate(model, eval_loaders, args.recall, 0, eval_metrics(args), keep=embedded, ctx=ctx,
                           normalize=normalize, own=own)
        start, best, best_epoch = 1, results[key], 0
        history = [{"epoch": 0, "lr": optimizer.param_groups[0]["lr"], "levels": mdr.levels.tolist(), **results}]
        checkpoint(0, results, best, best_epoch, history)

    epoch = start - 1
    try:
        for epoch in range(start, args.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            stats: dict = {}
            sampler.set_epoch(epoch)
            on_step = partial(tb.log_iteration, epoch) if tb else None
            loss = train_one_epoch(trained, train_loader, optimizer, criterion, mdr, args.lambda_mdr, args.nu_mdr,
                                   epoch, stats, amp_dtype, scaler, ctx, on_step, normalize, args.loss,
                                   args.loss_args)
            scheduler.step()
            evaluated = epoch % args.eval_every == 0 or epoch == args.epochs
            val = {}
            if evaluated:
                results = evaluate(model, eval_loaders, args.recall, epoch, eval_metrics(args), keep=embedded,
                                   ctx=ctx, normalize=normalize, own=own)
                val = (evaluate(model, val_loaders, args.recall, epoch, ctx=ctx, normalize=normalize)
                       if val_loaders else {})
                if results[key] > best:
                    best, best_epoch = results[key], epoch
            history.append({"epoch": epoch, "loss": loss, "mdr_loss": stats["reg_loss"], "lr": lr,
                            "levels": mdr.levels.tolist(), "momented_mean": float(mdr.momented_mean),
                            "momented_std": float(mdr.momented_std), **(results if evaluated else {}),
                            **prefixed(val)})
            checkpoint(epoch, results, best, best_epoch, history)
            if tb:
                tb.log_epoch(history[-1], next(iter(embedded.values()))[0] if evaluated else None, mdr,
                             not args.l2norm)
            print_record(history[-1])
            print("Best %s: %.4f" % (key, best))
    except KeyboardInterrupt as exc:
        signal_name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
        raise Interrupted(f"{signal_name} during epoch {epoch}; {save_dir / 'checkpoint.pth'} holds the run after "
                          f"epoch {epoch - 1} (the partial epoch is dropped so that resuming stays exact); "
                          f"continue with --resume {save_dir} (the run's flags are read from its checkpoint)",
                          code) from None
    if tb:
        tb.log_embeddings(*next(iter(embedded.values())), epoch)
        tb.close()
    if ctx.is_main:
        finish_run(args, embedded, eval_sets, mdr, save_dir, epoch)
    return results


def finish_run(args: argparse.Namespace, embedded: dict, eval_sets: dict, mdr: MDRLoss, save_dir: Path,
               epoch: int) -> None:
    """The end-of-run extras of the model after ``epoch`` (last.pth): the MDR distance sample, embeddings,
    retrievals and plots."""
    if embedded:
        save_embedding_sample(next(iter(embedded.values()))[0], mdr, not args.l2norm, save_dir, epoch)
    finish_eval(args, embedded, eval_sets, save_dir, f"last.pth (epoch {epoch})")
    if args.plot:
        for path in plot_run(save_dir):
            print(f"Plot written to {path}")


def print_record(record: dict) -> None:
    """``[Epoch N] name: value, ...``; the MDR levels one by one, named level_1, level_2, ..."""
    shown = [(k, v) for name, value in record.items() if name != "epoch"
             for k, v in (zip(level_names(len(value)), value) if name == "levels" else [(name, value)])]
    print("[Epoch %d] " % record["epoch"] + ", ".join(
        f"{k}: {v:.5g}" if isinstance(v, float) else f"{k}: {v}" for k, v in shown))


def cli(argv: list[str] | None = None, dataset: str = "cub200", description: str | None = __doc__) -> int:
    """The command line: one line on stderr and a non-zero exit code for every problem the user can fix;
    ``description`` heads --help."""
    signal.signal(signal.SIGTERM, raise_terminated)
    args = parse_args(argv, dataset, description)
    ctx = distributed.from_environment()
    try:
        main(args)
    except Interrupted as exc:
        if ctx.is_main:
            print(f"{exc}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        if ctx.is_main or not isinstance(exc, (distributed.SharedError, NonFiniteLoss)):
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if not distributed.peer_lost(exc, ctx):
            raise
        distributed.let_the_cause_report()
        return 1
    except KeyboardInterrupt as exc:
        print("interrupted before training started; nothing to save", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    return 0


if __name__ == "__main__":
    sys.exit(cli())
