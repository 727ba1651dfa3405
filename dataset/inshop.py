"""In-Shop Clothes Retrieval: train, and query -> gallery evaluation."""
from pathlib import Path

from dataset.benchmark import Benchmark, Remote, read_rows

IMG_FOLDER = "https://drive.google.com/drive/folders/0B7EVK8r0v71pYkd5TzBiclMzR00"
LIST_FOLDER = "https://drive.google.com/drive/folders/0B7EVK8r0v71pWVBJelFmMW5EWnM"


class InShop(Benchmark):
    """``<root>/Inshop/list_eval_partition.txt`` and ``img/``.

    The label of an item id ``id_00000123`` is 123 in every split, so query
    and gallery labels agree; ``.item_ids`` holds the id strings.
    """

    folder = "Inshop"
    required = ("list_eval_partition.txt", "img")
    splits = ("train", "query", "gallery")
    listing = "list_eval_partition.txt"
    remotes = (Remote("Inshop/img.zip", (), None, provides="Inshop/img", extract_to="Inshop"),)

    def how_to_get(self) -> str:
        return (f"In-Shop must be downloaded by hand: put img.zip (from {IMG_FOLDER}) and "
                f"list_eval_partition.txt (from {LIST_FOLDER}) into {self.base}; img.zip is extracted for you")

    @classmethod
    def evaluation_splits(cls, root: str | Path) -> tuple[str, ...]:
        return ("query", "gallery")

    @property
    def class_order(self) -> list[int]:
        """Item ids in the order they first appear in list_eval_partition.txt, as the authors' class_to_idx."""
        return list(dict.fromkeys(self.labels))

    def read_split(self, split: str) -> list[tuple[str, int]]:
        rows = read_rows(self.base / "list_eval_partition.txt", skip=2, columns=3)
        chosen = [(path, item) for path, item, status in rows if status == split]
        self.item_ids = [item for _, item in chosen]
        return [(str(self.base / path), int(item.split("_")[-1])) for path, item in chosen]
