"""UPMC Food-101 (Wang et al., 2015) in either of its published layouts.

Images are ``<root>/images/{train,test}/<class>/<class>_<n>.jpg``; the texts are

* ``<root>/texts/{train,test}_titles.csv`` — no header; each row ``image file, page title,
  class`` (67,972 / 22,716 rows), one row per line; or
* ``<root>/texts_txt/<class>/<class>_<n>.txt`` — the original release: the text of the web
  page each image came from, one file per image (what mmbt's ``format_food101.py`` reads;
  the split is the image's folder). Whitespace is collapsed; nothing else is changed.

The CSV is read when the split has one, else the ``texts_txt`` folder. The label is the
class index in the 101 Food-101 classes (alphabetical); the id is the image file name
(unique across classes) in both layouts. An unknown class, a row without three fields, a
quote left open, a text that is not UTF-8 or an image without its text file is a bad
record naming the file and line (``data.on_bad_record``).
"""

from __future__ import annotations

from pathlib import Path

from vilalign.data.base import Record, SplitDataset
from vilalign.data.files import decode_utf8, read_csv_rows
from vilalign.data.images import DataFormatError
from vilalign.data.records import BadRecords
from vilalign.data.registry import register_dataset
from vilalign.data.types import DatasetInfo, TaskInfo

SPLITS = ("train", "test")
CLASSES = (
    "apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad",
    "beignets", "bibimbap", "bread_pudding", "breakfast_burrito", "bruschetta", "caesar_salad",
    "cannoli", "caprese_salad", "carrot_cake", "ceviche", "cheese_plate", "cheesecake",
    "chicken_curry", "chicken_quesadilla", "chicken_wings", "chocolate_cake", "chocolate_mousse",
    "churros", "clam_chowder", "club_sandwich", "crab_cakes", "creme_brulee", "croque_madame",
    "cup_cakes", "deviled_eggs", "donuts", "dumplings", "edamame", "eggs_benedict", "escargots",
    "falafel", "filet_mignon", "fish_and_chips", "foie_gras", "french_fries", "french_onion_soup",
    "french_toast", "fried_calamari", "fried_rice", "frozen_yogurt", "garlic_bread", "gnocchi",
    "greek_salad", "grilled_cheese_sandwich", "grilled_salmon", "guacamole", "gyoza", "hamburger",
    "hot_and_sour_soup", "hot_dog", "huevos_rancheros", "hummus", "ice_cream", "lasagna",
    "lobster_bisque", "lobster_roll_sandwich", "macaroni_and_cheese", "macarons", "miso_soup",
    "mussels", "nachos", "omelette", "onion_rings", "oysters", "pad_thai", "paella", "pancakes",
    "panna_cotta", "peking_duck", "pho", "pizza", "pork_chop", "poutine", "prime_rib",
    "pulled_pork_sandwich", "ramen", "ravioli", "red_velvet_cake", "risotto", "samosa", "sashimi",
    "scallops", "seaweed_salad", "shrimp_and_grits", "spaghetti_bolognese", "spaghetti_carbonara",
    "spring_rolls", "steak", "strawberry_shortcake", "sushi", "tacos", "takoyaki", "tiramisu",
    "tuna_tartare", "waffles",
)  # fmt: skip
_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}


def records(root: str | Path, split: str, bad: BadRecords | None = None) -> list[Record]:
    """The records of ``split`` from whichever text layout ``root`` holds."""
    root, bad = Path(root), bad or BadRecords()
    csv_file = root / "texts" / f"{split}_titles.csv"
    if csv_file.is_file():
        return csv_records(root, split, csv_file, bad)
    if (root / "texts_txt").is_dir():
        return txt_records(root, split, bad)
    raise DataFormatError(
        f"{root}: no food101 texts for split {split!r} (neither {csv_file} nor a texts_txt/ folder)"
    )


def _class_index(cls: str, where: str) -> int:
    if cls not in _CLASS_INDEX:
        raise DataFormatError(f"{where}: unknown class {cls!r}")
    return _CLASS_INDEX[cls]


def csv_records(root: Path, split: str, path: Path, bad: BadRecords) -> list[Record]:
    """One record per CSV row."""
    out = []
    for lineno, (file, title, cls) in read_csv_rows(path, columns=3, bad=bad):
        label = bad.attempt(_class_index, cls, f"{path}:{lineno}")
        if label is not None:
            image = str(root / "images" / split / cls / file)
            out.append(Record(id=file, image=image, image_id=file, text=title, target=label))
    return out


def _txt_record(root: Path, image: Path, label: int) -> Record:
    cls = image.parent.name
    text_file = root / "texts_txt" / cls / f"{image.stem}.txt"
    if not text_file.is_file():
        raise DataFormatError(f"{image}: no text file {text_file}")
    text = " ".join(decode_utf8(text_file.read_bytes(), str(text_file)).split())
    return Record(id=image.name, image=str(image), image_id=image.name, text=text, target=label)


def txt_records(root: Path, split: str, bad: BadRecords) -> list[Record]:
    """One record per image of ``images/<split>/<class>/``, its text from ``texts_txt/``."""
    folder = root / "images" / split
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: image folder not found (texts_txt layout)")
    out = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = bad.attempt(_class_index, class_dir.name, str(class_dir))
        for image in sorted(class_dir.glob("*.jpg")) if label is not None else ():
            out.append(bad.attempt(_txt_record, root, image, label))
    if not out:
        raise DataFormatError(f"{folder}: no .jpg images under its class folders")
    return [r for r in out if r is not None]


@register_dataset
class Food101(SplitDataset):
    """UPMC Food-101: food photo + web page title, 101-way label (long scalar)."""

    info = DatasetInfo(
        name="food101",
        splits=SPLITS,
        num_labels=len(CLASSES),
        task=TaskInfo(loss="multiclass", monitor="accuracy"),
        label_names=CLASSES,
    )
    read_records = staticmethod(records)
