"""In-Shop Clothes Retrieval: train, and query -> gallery evaluation."""
from pathlib import Path

from dataset.benchmark import INT64_MAX, RESTORE_LISTING, Benchmark, Remote, id_number, numbered_rows
from errors import UserError

IMG_FOLDER = "https://drive.google.com/drive/folders/0B7EVK8r0v71pYkd5TzBiclMzR00"
LIST_FOLDER = "https://drive.google.com/drive/folders/0B7EVK8r0v71pWVBJelFmMW5EWnM"


class InShop(Benchmark):
    """``<root>/Inshop/list_eval_partition.txt`` and ``img/``.

    The label of an item id ``id_00000123`` is 123 in every split, so query
    and gallery labels agree; ``.item_ids`` holds the id strings.
    """

    folder = "Inshop"
    title = "In-Shop"
    required = ("list_eval_partition.txt", "img")
    splits = ("train", "query", "gallery")
    listing = "list_eval_partition.txt"
    remotes = (Remote("Inshop/img.zip", (), None, provides="Inshop/img", extract_to="Inshop", page=IMG_FOLDER),)

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
        listing = self.base / "list_eval_partition.txt"
        chosen = []
        for number, (path, item, status) in numbered_rows(listing, skip=2, columns=3):
            label = id_number(listing, number, item, f"an item id id_<digits> up to {INT64_MAX}", prefix="id_")
            if status not in self.splits:
                raise UserError(f"{listing}, line {number}: expected an evaluation status {', '.join(self.splits)}, "
                                f"found {status!r}; {RESTORE_LISTING}")
            if status == split:
                chosen.append((path, item, label))
        self.item_ids = [item for _, item, _ in chosen]
        return [(str(self.base / path), label) for path, _, label in chosen]
