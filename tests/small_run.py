"""The flags of a seconds-long training run on a generated tree, shared by the run-level tests."""
from pathlib import Path

import run
from model import build_model
from model.checkpoint import save_atomic

# timm's 0.37M-parameter test ResNet (BatchNorm, a residual trunk, timm's input settings): a run of it writes
# 7 MB and takes about a second, where ResNet-18 wrote 214 MB (its Adam checkpoint alone 134 MB) and took 8 s.
# The tests that are about a torchvision backbone or the default BN-Inception name theirs.
BACKBONE = "timm:test_resnet"
SMALL = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers", "0", "--batch", "8",
         "--num-image-per-class", "2", "--iter-per-epoch", "2", "--eval-batch", "16", "--backbone", BACKBONE,
         "--embedding-size", "16", "--lr", "1e-3", "--lr-decay-epochs", "5"]


def run_main(argv: list[str]) -> dict:
    """run.main on parsed ``argv``, as the command line would call it."""
    return run.main(run.parse_args(argv))


def pretrained_file(path: Path) -> Path:
    """``path`` holding random weights of BACKBONE's trunk in the layout --pretrained FILE reads."""
    save_atomic(build_model(BACKBONE, pretrained=False).base.model.state_dict(), path)
    return path
