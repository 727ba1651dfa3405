"""CUB-200-2011: classes 1-100 train, 101-200 test."""
from dataset.benchmark import Benchmark, Remote, class_folders, folder_samples

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"


class CUB200(Benchmark):
    """``<root>/CUB_200_2011/images/<NNN.Name>/*.jpg``; a label is the class's index in name order (0-199)."""

    folder = "CUB_200_2011"
    title = "CUB-200-2011"
    required = ("images",)
    remotes = (Remote("CUB_200_2011.tgz", (CUB_URL,), CUB_MD5, provides="CUB_200_2011/images"),)

    def read_split(self, split: str) -> list[tuple[str, int]]:
        classes = class_folders(self.base / "images")
        half = len(classes) // 2
        if split == "train":
            return folder_samples(classes[:half], 0)
        return folder_samples(classes[half:], half)
