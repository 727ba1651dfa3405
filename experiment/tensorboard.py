"""--tensorboard: training curves, the MDR state and the test embeddings in <save-dir>/tb.

The only module that imports tensorboard (through ``torch.utils.tensorboard``). The MDR levels are tagged
mdr/level_1, mdr/level_2, ... (``loss.mdr.level_names``), as the plots and the printed lines name them.
"""
import shlex
from pathlib import Path

import torch

from loss.mdr import MDRLoss, level_names, mdr_distance_sample
from optional import require

PROJECTOR_SAMPLE = 10000  # test embeddings given to the projector, at most
EPOCH_TAGS = {"loss": "epoch/loss", "mdr_loss": "epoch/mdr_term", "lr": "epoch/lr",
              "momented_mean": "mdr/running_mean", "momented_std": "mdr/running_std"}


def viewing_command(log_dir: Path) -> str:
    """The shell command that shows the logs in ``log_dir`` in a browser."""
    return f"tensorboard --logdir {shlex.quote(str(log_dir))}"


class TensorBoardLog:
    """Scalars per iteration and per epoch, a distance histogram per epoch, the embeddings at the end.

    Iterations are numbered over the whole run, ``(epoch - 1) * iters_per_epoch + iteration``,
    so a resumed run continues the same curves. Opening the log prints where it is and how to view it.
    """

    def __init__(self, log_dir: Path, iters_per_epoch: int):
        require("tensorboard", "tensorboard", "--tensorboard")  # checked first: torch's wrapper may be loaded
        writer = require("torch.utils.tensorboard", "tensorboard", "--tensorboard").SummaryWriter
        self.writer = writer(str(log_dir))
        self.iters_per_epoch = iters_per_epoch
        print(f"TensorBoard logs go to {log_dir}; view them with: {viewing_command(log_dir)}")

    def log_iteration(self, epoch: int, iteration: int, loss: float, mdr_term: float, lr: float) -> None:
        """The base loss, the MDR term (lambda * MDR + nu * sum of squared levels) and the lr of one step."""
        step = (epoch - 1) * self.iters_per_epoch + iteration
        for tag, value in (("iteration/loss", loss), ("iteration/mdr_term", mdr_term), ("iteration/lr", lr)):
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, record: dict, test_embeddings: torch.Tensor | None, mdr: MDRLoss, mean_scaled: bool) -> None:
        """Every value of the epoch's history record (metrics under metrics/), the three MDR levels, and,
        for an evaluated epoch (``test_embeddings`` (N, D) given), the histogram of normalised test
        distances as MDR sees them; then flushes to disk."""
        epoch = record["epoch"]
        for name, value in record.items():
            if name not in ("epoch", "levels"):
                self.writer.add_scalar(EPOCH_TAGS.get(name, f"metrics/{name}"), value, epoch)
        for name, level in zip(level_names(len(record["levels"])), record["levels"]):
            self.writer.add_scalar(f"mdr/{name}", level, epoch)
        if test_embeddings is not None:
            distances = mdr_distance_sample(test_embeddings, float(mdr.momented_mean), float(mdr.momented_std),
                                            mean_scaled)
            self.writer.add_histogram("mdr/normalized_test_distances", distances, epoch)
        self.writer.flush()

    def log_embeddings(self, embeddings: torch.Tensor, labels: torch.Tensor, epoch: int) -> None:
        """Up to PROJECTOR_SAMPLE test embeddings (a fixed random subset) with their class labels."""
        pick = torch.randperm(len(embeddings), generator=torch.Generator().manual_seed(0))[:PROJECTOR_SAMPLE]
        pick = pick.sort().values
        self.writer.add_embedding(embeddings[pick].float().cpu(), metadata=labels[pick].tolist(),
                                  global_step=epoch, tag="test_embeddings")

    def close(self) -> None:
        self.writer.close()
