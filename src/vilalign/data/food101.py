"""UPMC Food-101 (Wang et al., 2015) in its published layout.

``<root>/images/{train,test}/<class>/<file>.jpg`` and ``<root>/texts/{train,test}_titles.csv``
— no header; each row ``image file, page title, class`` (67,972 / 22,716 rows). The label is
the class index in the 101 Food-101 classes (alphabetical); an unknown class names the file
and line.
"""

from __future__ import annotations

from pathlib import Path

from vilalign.data.base import Record, SplitDataset
from vilalign.data.files import read_csv_rows
from vilalign.data.images import DataFormatError
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


def records(root: str | Path, split: str) -> list[Record]:
    """One record per CSV row; id = the image file name (unique across classes)."""
    root = Path(root)
    path = root / "texts" / f"{split}_titles.csv"
    out = []
    for lineno, (file, title, cls) in read_csv_rows(path, columns=3):
        if cls not in _CLASS_INDEX:
            raise DataFormatError(f"{path}:{lineno}: unknown class {cls!r}")
        out.append(
            Record(
                id=file,
                image=str(root / "images" / split / cls / file),
                image_id=file,
                text=title,
                target=_CLASS_INDEX[cls],
            )
        )
    return out


@register_dataset
class Food101(SplitDataset):
    """UPMC Food-101: food photo + web page title, 101-way label (long scalar)."""

    info = DatasetInfo(
        name="food101",
        splits=SPLITS,
        num_labels=len(CLASSES),
        task=TaskInfo(loss="multiclass", monitor="accuracy"),
    )
    read_records = staticmethod(records)
