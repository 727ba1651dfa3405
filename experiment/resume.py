"""What a checkpoint records of its run's flags, and which of them a resume may change."""
import argparse

from errors import UserError

# Flags that do not change what is trained: where things live, how fast it runs, what else is written.
CHANGEABLE = frozenset({"epochs", "workers", "device", "eval_batch", "cache_dir", "plot", "save_embeddings",
                        "save_retrievals", "download", "data", "metrics", "resume", "save_dir", "overwrite",
                        "deterministic", "eval_every"})


def run_flags(args: argparse.Namespace) -> dict:
    """Every flag of the run as plain values, for the checkpoint."""
    return {k: v for k, v in sorted(vars(args).items())}


def changed_flags(saved: dict, args: argparse.Namespace) -> list[str]:
    """'--flag: saved -> given' for each run-defining flag that differs from the checkpoint's."""
    given = run_flags(args)
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
                            "resume with the run's own flags, or start a new run with another --save-dir")
    done = state["epoch"]
    if args.epochs < done:
        raise UserError(f"{path} has already trained {done} epochs; --epochs {args.epochs} is below that "
                        f"(pass --epochs {done + 1} or more to train on)")
    if args.epochs == done:
        print(f"The run in {path} already finished its {done} epochs; pass --epochs above {done} to train on")
        return False
    return True
