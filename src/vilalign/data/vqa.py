"""VQA v2 (Goyal et al., 2017) in its published layout, with the official answer handling.

Under ``<root>``: ``v2_OpenEnded_mscoco_{train2014,val2014,test-dev2015,test2015}_questions.json``
(``questions[]``: image_id, question, question_id), ``v2_mscoco_{train,val}2014_annotations.json``
(``annotations[]``: question_id, 10 ``answers``, ``multiple_choice_answer``, ...), and the COCO
images ``<subtype>/COCO_<subtype>_<image_id:012d>.jpg`` (test-dev images live in test2015).

Answers are normalised as the official evaluation script does (punctuation, number words,
articles, contractions). The label is a soft target over an answer vocabulary (the top-k
normalised answers of the train split by frequency, saved with the run): for each answer,
``min(1, matches / 3)`` averaged over the 10 leave-one-out sets of 9 human answers — 0, 0.3,
0.6, 0.9, 1.0 for 0, 1, 2, 3, ≥ 4 matching humans.

A question none of whose human answers is in the vocabulary would get an all-zero target:
it is a bad record (``data.on_bad_record``: an error naming it, or dropped and counted —
what training on the top answers usually does; the official accuracy counts such questions
as wrong, and ``vilalign predict`` scores every question the official way).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from vilalign.data.base import ImageTextDataset, Record
from vilalign.data.config import CacheConfig, DataConfig
from vilalign.data.files import read_json, require
from vilalign.data.images import DataFormatError, OnBadImage
from vilalign.data.records import BadRecords, OnBadRecord
from vilalign.data.registry import register_dataset
from vilalign.data.transforms import ImageTransform
from vilalign.data.types import DatasetInfo, TaskInfo
from vilalign.io import write_json_atomic

SPLITS = ("train", "val", "test-dev", "test")
SUBTYPES = {"train": "train2014", "val": "val2014", "test-dev": "test-dev2015", "test": "test2015"}

# ---------------------------------------------------------------- official normalisation
# Tables and rules from the official VQA evaluation script (vqaEval.py).

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
# the official pattern, quirk included: "(?!<=\d)" is a lookahead, so a period is dropped
# unless a digit follows it ("3.5" keeps its point, "dog." loses it)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digit_article(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """The official normalisation: "Two" → "2", "a dog." → "dog", "isnt" → "isn't"."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(answer))


def soft_score(answer: str, human_answers: Sequence[str]) -> float:
    """Official accuracy of ``answer`` against the (normalised) human answers.

    ``min(1, matches / 3)`` over each leave-one-out set, averaged: 1, 2, 3, ≥ 4 matching
    humans out of 10 give 0.3, 0.6, 0.9, 1.0.
    """
    matches = sum(a == answer for a in human_answers)
    n = len(human_answers)
    if n == 0:
        return 0.0
    # leaving out a matching answer leaves matches-1 of them; leaving out another, matches
    total = matches * min(1.0, (matches - 1) / 3) + (n - matches) * min(1.0, matches / 3)
    return total / n


def soft_targets(
    human_answers: Sequence[str], vocab_index: dict[str, int]
) -> list[tuple[int, float]]:
    """(answer index, score) for every in-vocabulary answer some human gave."""
    return [
        (vocab_index[a], soft_score(a, human_answers))
        for a in sorted(set(human_answers))
        if a in vocab_index
    ]


# ---------------------------------------------------------------- files


def questions_file(root: Path, split: str) -> Path:
    return root / f"v2_OpenEnded_mscoco_{SUBTYPES[split]}_questions.json"


def annotations_file(root: Path, split: str) -> Path:
    return root / f"v2_mscoco_{SUBTYPES[split]}_annotations.json"


def image_path(root: Path, split: str, image_id: int) -> Path:
    folder = "test2015" if split.startswith("test") else SUBTYPES[split]
    return root / folder / f"COCO_{folder}_{int(image_id):012d}.jpg"


def _annotations(root: Path, split: str) -> dict[int, list[str]]:
    """question_id → the normalised human answers."""
    return {qid: ann["answers"] for qid, ann in annotation_details(root, split).items()}


def annotation_details(root: str | Path, split: str) -> dict[int, dict[str, Any]]:
    """question_id → ``answers`` (normalised), ``answer_type`` and ``question_type`` (None
    when a file lacks them): what the official evaluation groups its accuracies by."""
    path = annotations_file(Path(root), split)
    out = {}
    for n, ann in enumerate(require(read_json(path), "annotations", str(path))):
        where = f"{path}: annotations[{n}]"
        answers = [
            normalize_answer(require(a, "answer", f"{where}.answers"))
            for a in require(ann, "answers", where)
        ]
        qid = require(ann, "question_id", where)
        types = {k: ann.get(k) for k in ("answer_type", "question_type")}
        out[qid] = {"answers": answers, **types}
    return out


def build_answer_vocab(root: str | Path, size: int) -> list[str]:
    """The ``size`` most frequent normalised ``multiple_choice_answer`` s of the train split."""
    path = annotations_file(Path(root), "train")
    data = read_json(path)
    counts = Counter(
        normalize_answer(require(a, "multiple_choice_answer", f"{path}: annotations[{n}]"))
        for n, a in enumerate(require(data, "annotations", str(path)))
    )
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))  # ties: alphabetical
    return [a for a, _ in ranked[:size]]


def save_answer_vocab(vocab: Sequence[str], path: str | Path) -> None:
    write_json_atomic(path, list(vocab), indent=0)


def load_answer_vocab(path: str | Path) -> list[str]:
    vocab = read_json(path)
    if not isinstance(vocab, list) or not all(isinstance(a, str) for a in vocab):
        raise DataFormatError(f"{path}: expected a JSON list of answer strings")
    return vocab


def _target(
    qid: Any, answers: dict[Any, list[str]], index: dict[str, int], file: Path
) -> list[tuple[int, float]]:
    if qid not in answers:
        raise DataFormatError(f"{file}: no annotation for question_id {qid}")
    target = soft_targets(answers[qid], index)
    if not target:
        given = sorted(set(answers[qid]))
        raise DataFormatError(
            f"{file}: question_id {qid}: none of its answers {given[:5]} is in the "
            f"{len(index)}-answer vocabulary (its target would be all zeros)"
        )
    return target


def _no_target(qid: Any) -> None:
    return None


def _record(
    root: Path, split: str, q: dict[str, Any], where: str, target_of: Callable[[Any], Any]
) -> Record:
    qid = require(q, "question_id", where)
    image_id = require(q, "image_id", where)  # the COCO image: several questions each
    return Record(
        id=str(qid),
        image=str(image_path(root, split, image_id)),
        image_id=str(image_id),
        text=str(require(q, "question", where)),
        target=target_of(qid),
    )


def records(
    root: str | Path,
    split: str,
    vocab: Sequence[str],
    bad: BadRecords | None = None,
    targets: bool = True,
) -> list[Record]:
    """One record per question; target = sparse soft scores (None for the test splits, and
    with ``targets=False``: every question kept, answers not read)."""
    root, bad = Path(root), bad or BadRecords()
    path = questions_file(root, split)
    questions = require(read_json(path), "questions", str(path))
    if not questions:
        raise DataFormatError(f"{path}: field 'questions' is empty")
    target_of: Callable[[Any], Any] = _no_target
    if targets and split in ("train", "val"):
        index = {a: i for i, a in enumerate(vocab)}
        answers, file = _annotations(root, split), annotations_file(root, split)
        target_of = functools.partial(_target, answers=answers, index=index, file=file)
    out = [
        bad.attempt(_record, root, split, q, f"{path}: questions[{n}]", target_of)
        for n, q in enumerate(questions)
    ]
    return [r for r in out if r is not None]


@register_dataset
class VQAv2(ImageTextDataset):
    """VQA v2: COCO image + question, soft target over the answer vocabulary (float)."""

    # num_labels: the answer vocabulary's size, known once it is built or loaded
    info = DatasetInfo(
        name="vqa", splits=SPLITS, task=TaskInfo(loss="soft", monitor="vqa_accuracy")
    )

    def __init__(
        self,
        root: str | Path,
        split: str,
        transform: ImageTransform,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        answer_vocab: Sequence[str] | str | Path | None = None,
        vocab_size: int = 3129,
        on_bad_record: OnBadRecord = "error",
        targets: bool = True,
    ) -> None:
        if answer_vocab is None:
            answer_vocab = build_answer_vocab(root, vocab_size)
        elif isinstance(answer_vocab, (str, Path)):
            answer_vocab = load_answer_vocab(answer_vocab)
        self.answer_vocab = list(answer_vocab)
        bad = BadRecords(on_bad_record)
        super().__init__(
            f"{self.info.name}-{split}",
            records(root, split, self.answer_vocab, bad, targets),
            transform,
            on_bad_image,
            cache,
            limit,
            bad,
        )

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> VQAv2:
        return cls(
            cfg.root,  # type: ignore[arg-type]  (info.needs_root: the config has one)
            split,
            transform,
            answer_vocab=cfg.vqa_answer_vocab,
            vocab_size=cfg.vqa_answer_vocab_size,
            **cfg.reader_options(),
        )

    @property
    def num_labels(self) -> int:
        return len(self.answer_vocab)

    @property
    def label_names(self) -> list[str]:
        return list(self.answer_vocab)

    def label_tensor(self, target: Any) -> torch.Tensor | None:
        if target is None:
            return None
        label = torch.zeros(self.num_labels)
        for i, score in target:
            label[i] = score
        return label
