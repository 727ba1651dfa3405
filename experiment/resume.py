"""What a checkpoint records of its run's flags, and which of them a resume may change."""
import argparse

from errors import UserError
from loss.mdr import LEVELS, MOMENTUM

# Flags that never change a run's numbers: where things live, how fast it runs (float rounding aside), what
# else is written.
NO_EFFECT = frozenset({"workers", "device", "eval_batch", "cache_dir", "plot", "save_embeddings",
                       "save_retrievals", "tensorboard", "download", "data", "metrics", "resume", "save_dir",
                       "overwrite", "deterministic", "strict_data", "mode", "per_class", "worst"})
# Flags a resume may change: those, more epochs, another evaluation schedule, and TF32 (a speed setting whose
# rounding can change numbers, so the report still tells runs apart by it).
CHANGEABLE = NO_EFFECT | {"epochs", "eval_every", "tf32"}

# Flags added after runs were first recorded, with the value the runs recorded before them used.
IMPLIED = {"loss": "triplet", "loss_args": [], "loss_lr_mult": 1.0, "mdr_levels": list(LEVELS),
           "mdr_momentum": MOMENTUM}


# Flags about this invocation only, never taken from the checkpoint.
INVOCATION = frozenset({"resume", "save_dir", "overwrite", "mode"})


def run_flags(args: argparse.Namespace) -> dict:
    """Every flag of the run as plain values, for the checkpoint."""
    return {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_")}


def recorded_flags(saved: dict) -> dict:
    """The flags a checkpoint or config.json recorded, with the IMPLIED values of flags added since."""
    return {**IMPLIED, **saved}


def adopt_saved_flags(args: argparse.Namespace, state: dict) -> None:
    """Give every flag the command line did not set (``args._given``) the value the checkpoint recorded.

    So ``run.py --resume DIR`` alone continues the run as it was started.
    """
    given = getattr(args, "_given", set())
    for key, value in state.get("args", {}).items():
        if key not in given and key not in INVOCATION and hasattr(args, key):
            setattr(args, key, value)


def changed_flags(saved: dict, args: argparse.Namespace) -> list[str]:
    """'--flag: saved -> given' for each run-defining flag that differs from the checkpoint's."""
    given, saved = run_flags(args), recorded_flags(saved)
    return [f"--{k.replace('_', '-')}: {saved[k]!r} -> {given.get(k)!r}"
            for k in sorted(saved) if k not in CHANGEABLE and saved[k] != given.get(k)]


def check_resume(state: dict, args: argparse.Namespace, path: str) -> bool:
    """Refuse a resume that changes the run; return False when the run already finished its epochs."""
    if "args" not in state:
        print(f"{path} predates recorded flags; they cannot be checked against this command")
    else:
        changed = changed_flags(state["args"], args)
        if changed:
            raise UserError(f"--resume {path} was given flags that change the run: {'; '.join(changed)}; "
                            "drop them (the run's own flags are read from its checkpoint), or start a new run "
                            "with another --save-dir")
    done = state["epoch"]
    if args.epochs < done:
        raise UserError(f"{path} has already trained {done} epochs; --epochs {args.epochs} is below that "
                        f"(pass --epochs {done + 1} or more to train on)")
    if args.epochs == done:
        print(f"The run in {path} already finished its {done} epochs; pass --epochs above {done} to train on")
        return False
    return True
