"""Cars-196: classes 1-98 train, 99-196 test, in annotation order."""
import scipy.io

from dataset.benchmark import Benchmark, Remote
from errors import UserError

CARS_IMS_MD5 = "d5c8f0aa497503f355e17dc7886c3f14"
CARS_ANNOS_MD5 = "b407c6086d669747186bd1d764ff9dbc"
_HOSTS = ("http://ai.stanford.edu/~jkrause/car196/", "http://imagenet.stanford.edu/internal/car196/")


class Cars196(Benchmark):
    """``<root>/Cars196/car_ims/*.jpg`` and ``cars_annos.mat``; label = class - 1; the ``test`` field is ignored."""

    folder = "Cars196"
    required = ("cars_annos.mat", "car_ims")
    remotes = (
        Remote("Cars196/car_ims.tgz", tuple(h + "car_ims.tgz" for h in _HOSTS), CARS_IMS_MD5,
               provides="Cars196/car_ims", extract_to="Cars196"),
        Remote("Cars196/cars_annos.mat", tuple(h + "cars_annos.mat" for h in _HOSTS), CARS_ANNOS_MD5,
               provides="Cars196/cars_annos.mat", extract_to=None),
    )

    def how_to_get(self) -> str:
        return ("the original Cars-196 host went offline in 2023 and no maintained mirror serves it: obtain "
                f"car_ims.tgz (md5 {CARS_IMS_MD5}) and cars_annos.mat (md5 {CARS_ANNOS_MD5}), put both in "
                f"{self.base}, and run again (car_ims.tgz is then extracted for you)")

    def read_split(self, split: str) -> list[tuple[str, int]]:
        path = self.base / "cars_annos.mat"
        try:
            annotations = scipy.io.loadmat(path, squeeze_me=True)["annotations"]
        except (ValueError, KeyError, OSError) as exc:
            raise UserError(f"cannot read {path} ({exc}); {self.how_to_get()}") from exc
        samples = []
        for ann in annotations.ravel():
            cls = int(ann["class"])
            if (cls <= 98) == (split == "train"):
                samples.append((str(self.base / str(ann["relative_im_path"])), cls - 1))
        return samples
