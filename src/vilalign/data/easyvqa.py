"""easy-VQA, read from the ``easy-vqa`` package (real data shipped inside it).

4,000 train / 1,000 test 64×64 PNG images, 38,575 / 9,673 questions, 13 answers. The label
is the answer's index in the package's ``data/answers.txt`` (``easy_vqa.get_answers()``),
not the order its README prints. :class:`EasyVQACaptions` turns each image's
question/answer pairs into caption sentences ("a blue rectangle.") for pretraining.
"""

from __future__ import annotations

import re
from collections import defaultdict

from vilalign.data.base import ImageTextDataset, Record
from vilalign.data.config import CacheConfig, DataConfig
from vilalign.data.images import OnBadImage
from vilalign.data.records import BadRecords, OnBadRecord
from vilalign.data.registry import register_dataset
from vilalign.data.transforms import ImageTransform
from vilalign.data.types import DatasetInfo, Sample, TaskInfo

SPLITS = ("train", "test")
SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")


def answers() -> list[str]:
    """The 13 answers in the package's file order: label ``i`` is ``answers()[i]``."""
    import easy_vqa

    return list(easy_vqa.get_answers())


#: What a question asks, as :func:`question_family` names it (predictions report the
#: accuracy of each).
QUESTION_FAMILIES = ("shape", "color", "yes/no", "yes/no negated")


def question_family(question: str) -> str:
    """What an easy-VQA question asks: ``shape`` ("what shape is in the image?", "what is
    the red shape?"), ``color`` ("what is the color of the circle?"), ``yes/no`` ("is
    there a red shape?") or ``yes/no negated`` ("is there not a circle?", "is no red
    shape present?"), the kind a model trained from scratch finds hardest."""
    words = re.findall(r"[a-z]+", question.lower())
    if words[:1] == ["what"]:
        return "color" if "color" in words else "shape"
    return "yes/no negated" if _NEGATION.search(question.lower()) else "yes/no"


def _load_split(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    """(questions, answers, image ids, image id → path) for one split of the package."""
    import easy_vqa

    if split not in SPLITS:
        raise ValueError(f"easyvqa: unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    if split == "train":
        q, a, ids = easy_vqa.get_train_questions()
        return q, a, ids, easy_vqa.get_train_image_paths()
    q, a, ids = easy_vqa.get_test_questions()
    return q, a, ids, easy_vqa.get_test_image_paths()


def _image(split: str, img: int, paths: dict[int, str]) -> dict[str, str]:
    """The record fields of image ``img``: its file, and its id ``<split>-img<img>``, which
    the image's questions and captions share."""
    # a missing image gets a path that does not exist, so the missing-file policy names it
    path = paths.get(img, f"<easy_vqa {split} image {img}>.png")
    return {"image": path, "image_id": f"{split}-img{img}"}


def question_records(split: str) -> list[Record]:
    """One record per question: id ``<split>-<n>``, target = answer index."""
    questions, answer_words, image_ids, paths = _load_split(split)
    index = {a: i for i, a in enumerate(answers())}
    records = []
    for n, (q, a, img) in enumerate(zip(questions, answer_words, image_ids, strict=True)):
        if a not in index:
            raise ValueError(f"easyvqa {split} question {n}: unknown answer {a!r}")
        records.append(
            Record(id=f"{split}-{n}", **_image(split, img, paths), text=q, target=index[a])
        )
    return records


@register_dataset
class EasyVQA(ImageTextDataset):
    """easy-VQA questions as a 13-way classification (label: long scalar)."""

    info = DatasetInfo(
        name="easyvqa",
        splits=SPLITS,
        num_labels=13,  # len(answers()), the lines of the package's answers.txt
        task=TaskInfo(loss="multiclass", monitor="accuracy"),
        needs_root=False,  # shipped inside the easy-vqa package
    )

    def __init__(
        self,
        split: str,
        transform: ImageTransform,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        self.answers = answers()
        records = question_records(split)
        bad = BadRecords(on_bad_record)  # (the package's data has none)
        super().__init__(f"easyvqa-{split}", records, transform, on_bad_image, cache, limit, bad)

    @property
    def label_names(self) -> list[str]:
        return list(self.answers)

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> EasyVQA:
        return cls(split, transform, **cfg.reader_options())


# ---------------------------------------------------------------------- captions

_NEGATION = re.compile(r"\b(not|no)\b")
_TEMPLATES = (
    "a {color} {shape}.",
    "there is a {color} {shape} in the image.",
    "the image shows a {color} {shape}.",
    "a {shape} colored {color}.",
)


def image_facts(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """What an image's question/answer pairs establish: ``shape``, ``color`` (either may be
    missing) and ``absent`` (space-separated words the answers rule out).

    "what color is the triangle?" → blue gives both; "is there not a red shape?" → no
    affirms red; "is there a circle?" → no rules circles out.
    """
    facts: dict[str, str] = {}
    absent: set[str] = set()
    for question, answer in pairs:
        words = re.findall(r"[a-z]+", question.lower())
        shape = next((w for w in words if w in SHAPES), None)
        color = next((w for w in words if w in COLORS), None)
        if answer in SHAPES:
            facts["shape"] = answer
        elif answer in COLORS:
            facts["color"] = answer
        elif answer in ("yes", "no") and (answer == "yes") == bool(_NEGATION.search(question)):
            absent.update(w for w in (shape, color) if w)  # "no X" is true: X is not there
            continue
        if shape:
            facts.setdefault("shape", shape)
        if color:
            facts.setdefault("color", color)
    # every image holds exactly one shape of one colour: all others ruled out names it
    for key, options in (("shape", SHAPES), ("color", COLORS)):
        left = [w for w in options if w not in absent]
        if key not in facts and len(left) == 1:
            facts[key] = left[0]
    if absent:
        facts["absent"] = " ".join(sorted(absent))
    return facts


def caption_for(facts: dict[str, str], variant: int) -> str:
    """A caption sentence from the facts; ``variant`` picks the template."""
    color, shape = facts.get("color"), facts.get("shape")
    if color and shape:
        return _TEMPLATES[variant % len(_TEMPLATES)].format(color=color, shape=shape)
    if shape:
        return f"there is a {shape} in the image."
    if color:
        return f"there is a {color} shape in the image."
    ruled_out = facts.get("absent", "").split()
    if not ruled_out:
        return "a shape."
    return (
        "a shape that is not "
        + " and not ".join(f"a {w}" if w in SHAPES else w for w in ruled_out)
        + "."
    )


def caption_records(split: str, captions_per_image: int = 1) -> list[Record]:
    """``captions_per_image`` records per image, id ``<split>-img<id>-<k>``, image id
    ``<split>-img<id>``, no target."""
    questions, answer_words, image_ids, paths = _load_split(split)
    pairs: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for q, a, img in zip(questions, answer_words, image_ids, strict=True):
        pairs[img].append((q, a))
    records = []
    for img in sorted(pairs):
        facts = image_facts(pairs[img])
        image = _image(split, img, paths)
        for k in range(captions_per_image):
            text = caption_for(facts, img + k)
            records.append(Record(id=f"{image['image_id']}-{k}", **image, text=text))
    return records


def caption_key(sample: Sample) -> str:
    """What a caption says (its shape and colour words), for alignment-prediction negatives.

    Only 24 colour × shape pairs exist, so a caption taken from another image is often
    true of this one too; ``PretrainingCollator(image_key=caption_key)`` never draws a
    negative from a sample whose caption says the same thing.
    """
    words = re.findall(r"[a-z]+", sample.text.lower())
    return " ".join(sorted(w for w in words if w in SHAPES or w in COLORS))


@register_dataset
class EasyVQACaptions(ImageTextDataset):
    """easy-VQA images with captions built from their Q/A pairs (pretraining data).

    Alignment-prediction negatives come from other images (``Sample.image_id``); for
    negatives that also never say the same thing, use :func:`caption_key` as the key.
    """

    info = DatasetInfo(name="easyvqa_captions", splits=SPLITS, needs_root=False)

    def __init__(
        self,
        split: str,
        transform: ImageTransform,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        captions_per_image: int = 1,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        # the cache is keyed by image file, so it is shared with the question dataset
        super().__init__(
            f"easyvqa-{split}",
            caption_records(split, captions_per_image),
            transform,
            on_bad_image,
            cache,
            limit,
            BadRecords(on_bad_record),
        )

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> EasyVQACaptions:
        options = cfg.reader_options()
        return cls(split, transform, captions_per_image=cfg.captions_per_image, **options)
