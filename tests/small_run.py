"""The flags of a seconds-long training run on a generated tree, shared by the run-level tests."""
import run

SMALL = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers", "0", "--batch", "8",
         "--num-image-per-class", "2", "--iter-per-epoch", "2", "--eval-batch", "16", "--backbone", "resnet18",
         "--embedding-size", "16", "--lr", "1e-3", "--lr-decay-epochs", "5"]


def run_main(argv: list[str]) -> dict:
    """run.main on parsed ``argv``, as the command line would call it."""
    return run.main(run.parse_args(argv))
