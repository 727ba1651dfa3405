"""Stanford Online Products: Ebay_train.txt and Ebay_test.txt."""
from dataset.benchmark import Benchmark, Remote, id_number, numbered_rows

SOP_URLS = ("http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
            "https://drive.usercontent.google.com/download?id=1TclrpQOF_ullUP99wk_gjGN8pKvtErG8"
            "&export=download&confirm=t")
SOP_MD5 = "7f73d41a2f44250d4779881525aea32e"


class StanfordOnlineProducts(Benchmark):
    """Rows ``image_id class_id super_class_id path`` after a header; label = class_id - 1."""

    folder = "Stanford_Online_Products"
    title = "Stanford Online Products"
    required = ("Ebay_train.txt", "Ebay_test.txt")
    listing = "Ebay_{split}.txt"
    remotes = (Remote("Stanford_Online_Products.zip", SOP_URLS, SOP_MD5,
                      provides="Stanford_Online_Products/Ebay_test.txt"),)

    def read_split(self, split: str) -> list[tuple[str, int]]:
        listing = self.base / f"Ebay_{split}.txt"
        return [(str(self.base / path), id_number(listing, number, class_id, "a class id of 1 or more", low=1) - 1)
                for number, (_, class_id, _, path) in numbered_rows(listing, skip=1, columns=4)]
