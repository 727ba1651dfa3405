"""Where the metrics compute: their exact steps are float64, which Apple's MPS does not have."""
import torch


def float64_device(device: torch.device) -> torch.device:
    """The device that computes the metrics of embeddings on ``device``: that one, or the CPU for MPS."""
    return torch.device("cpu") if device.type == "mps" else device
