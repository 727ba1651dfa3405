"""Benchmarks, transforms, the P x K sampler and downloads."""
from dataset.cars import Cars196
from dataset.cub import CUB200
from dataset.folder import Folder
from dataset.inshop import InShop
from dataset.manifest import Manifest
from dataset.sop import StanfordOnlineProducts

DATASETS = {
    "cub200": CUB200,
    "cars196": Cars196,
    "stanford": StanfordOnlineProducts,
    "sop": StanfordOnlineProducts,
    "inshop": InShop,
    "folder": Folder,
    "csv": Manifest,
}

__all__ = ["CUB200", "Cars196", "StanfordOnlineProducts", "InShop", "Folder", "Manifest", "DATASETS"]
