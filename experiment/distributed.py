"""torchrun support: the process group, rank checks, batch gathers and sharded evaluation, in one place.

Without torchrun (no ``WORLD_SIZE`` above 1 in the environment) everything here
is a no-op for one process, so ``python run.py`` behaves as before.
"""
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn

from errors import UserError

T = TypeVar("T")

# How long the other ranks wait for rank 0 to download, extract and cache a dataset (SOP is 3 GB, and building
# a --cache-dir cache of 120k images takes a while), far above the collectives' timeout (NCCL's 10 minutes),
# which stays as torch sets it so that a hung rank is still found during training.
PREPARATION_TIMEOUT = timedelta(hours=24)


# How gloo and the TCP store fail when another process of the run has ended (crashed, killed, stopped on an error).
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
CAUSE_GRACE_S = 2.0  # how long a process that lost a peer waits, so that the failed one reports first


class SharedError(UserError):
    """A UserError every rank meets alike (rank 0's, given to the others, or one each finds itself);
    rank 0 alone reports it."""


@dataclass(frozen=True)
class Context:
    """This process's place in the run: ``rank`` of ``world`` processes, its ``local_rank`` on the node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_environment() -> Context:
    """The torchrun context (RANK, WORLD_SIZE, LOCAL_RANK), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    return Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(ctx: Context, device: torch.device) -> torch.device:
    """Each rank's CUDA device is its LOCAL_RANK; other devices are shared."""
    if ctx.active and device.type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
        return torch.device("cuda", ctx.local_rank)
    return device


@contextmanager
def process_group(ctx: Context, device: torch.device) -> Iterator[None]:
    """The process group (nccl on CUDA, gloo otherwise) for the ``with``; rank > 0 prints nothing to stdout."""
    if not ctx.active:
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ctx.rank, world_size=ctx.world)
    stdout = sys.stdout
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")
    try:
        yield
    finally:
        if not ctx.is_main:
            sys.stdout.close()
            sys.stdout = stdout
        dist.destroy_process_group()


def on_main(ctx: Context, work: Callable[[], T], group: dist.ProcessGroup | None = None) -> T:
    """Run ``work`` on rank 0 only and give its result, or its UserError, to every rank (through ``group``,
    default the whole run's)."""
    if not ctx.active:
        return work()
    box: list = [None]
    if ctx.is_main:
        try:
            box[0] = ("ok", work())
        except UserError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0, group=group)
    status, value = box[0]
    if status == "error":
        raise (UserError if ctx.is_main else SharedError)(value)
    return value


@contextmanager
def main_first(ctx: Context) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, cache builds); the others run it after waiting for it.

    They wait in a gloo group of its own with ``PREPARATION_TIMEOUT``, not the
    collectives' timeout. A UserError on rank 0 ends every rank with the same
    message; a crash of rank 0 closes its connections, which ends the wait at once.
    """
    if not ctx.active:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)
    try:
        if ctx.is_main:
            error = None
            try:
                yield
            except UserError as exc:
                error = str(exc)
            on_main(ctx, lambda: _reraise(error), group)
            return
        on_main(ctx, lambda: None, group)
    finally:
        dist.destroy_process_group(group)
    yield


def _reraise(error: str | None) -> None:
    if error is not None:
        raise UserError(error)


def gather_batch(local: torch.Tensor, ctx: Context) -> torch.Tensor:
    """(n, ...) rows of every rank -> (world * n, ...) in rank order, with gradients flowing back.

    Every rank computes the same loss on the gathered batch; the backward of
    the gather sums the ranks' gradients (world x this rank's share) and DDP
    averages them (/ world), so the update equals the single-process one.
    """
    if not ctx.active:
        return local
    with warnings.catch_warnings():  # its deprecation names no replacement that keeps the gradient
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_nn.all_gather(local))


def gather_rows(local: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Concatenate every rank's (n_r, ...) rows in rank order; the n_r may differ. No gradient."""
    if not ctx.active:
        return local
    sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(ctx.world)]
    dist.all_gather(sizes, torch.tensor([len(local)], device=local.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(size.item())] for part, size in zip(parts, sizes)])


def shard_range(n: int, ctx: Context) -> range:
    """This rank's contiguous share of ``n`` items: the first ``n % world`` ranks get one more."""
    base, extra = divmod(n, ctx.world)
    start = ctx.rank * base + min(ctx.rank, extra)
    return range(start, start + base + (ctx.rank < extra))


def peer_lost(exc: BaseException, ctx: Context) -> bool:
    """Whether ``exc`` is a collective or store call failing because another process of the run ended.

    That process printed its own error (or torchrun reports how it ended), so
    this one has nothing to add.
    """
    return ctx.active and isinstance(exc, RuntimeError) and any(text in str(exc) for text in PEER_LOST)


def let_the_cause_report(seconds: float = CAUSE_GRACE_S) -> None:
    """Wait ``seconds`` before ending on a lost peer: the process that failed first prints its error and exits,
    and torchrun names it as the root cause, before torchrun stops the others (its SIGTERM ends the wait)."""
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
