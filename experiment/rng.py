"""The random states a checkpoint keeps, and how a resume restores them on the same or on another device.

A run draws from python's ``random``, torch's CPU generator, the CUDA generator
of its device (dropout and drop-path of timm models), the batch sampler and the
triplet sampler's negatives generator, which lives on the training device.
"""
import hashlib
import random

import torch

from dataset.sampler import SeededShards


def rng_state(sampler: SeededShards, negatives: torch.Generator) -> dict:
    """Every random state of the run, for the checkpoint; the negatives generator's with its device type."""
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "sampler": sampler.state_dict(), "negatives": negatives.get_state(),
            "negatives_device": negatives.device.type}


def set_rng_state(state: dict, sampler: SeededShards, negatives: torch.Generator) -> None:
    """Restore ``rng_state``'s ``state``, wherever this process runs now (see ``restore_cuda``, ``restore_generator``)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    restore_cuda(state["cuda"])
    sampler.load_state_dict(state["sampler"])
    if "negatives" in state:
        restore_generator(negatives, state["negatives"], state.get("negatives_device"))


def restore_cuda(saved: list[torch.Tensor]) -> None:
    """Give this process's CUDA device the state of the device the checkpoint's writer trained on.

    The writer is rank 0 (or the only process), which trains on its device 0;
    every rank of a run draws the same numbers on its own device, so that state
    is what any rank's device needs, on any number of GPUs. The writer's other
    devices never drew, and a node with fewer GPUs has no place for their states.
    Nothing to do without CUDA or without a saved state (a run from the CPU or MPS).
    """
    if saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved[0], torch.cuda.current_device())


def restore_generator(generator: torch.Generator, state: torch.Tensor, saved_on: str | None) -> None:
    """Load ``state``, saved from a generator on device type ``saved_on``, into ``generator``.

    A state of another device type does not fit (CUDA's Philox state is 16
    bytes of seed and offset, the CPU's Mersenne Twister 5,056 bytes, and the
    two streams differ anyway): ``generator`` is then seeded with 63 bits of
    the state's sha256, so a resume on the new device type draws the same
    numbers every time, though not those the old device would have drawn.
    Checkpoints older than ``saved_on`` count a state of ``generator``'s size as its own.
    """
    if saved_on is None:
        saved_on = generator.device.type if state.numel() == generator.get_state().numel() else "another device"
    if saved_on == generator.device.type:
        generator.set_state(state)
        return
    generator.manual_seed(derived_seed(state))
    print(f"[Resume] the triplet sampler's generator was saved on {saved_on} and cannot continue on "
          f"{generator.device.type}; it is seeded from its saved state instead (the same draws on every such resume, "
          f"other draws than an uninterrupted run's)")


def derived_seed(state: torch.Tensor) -> int:
    """A 63-bit seed that depends on every byte of a generator ``state``."""
    digest = hashlib.sha256(state.cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
