"""Writers of small fixture copies of every dataset format, in the publishers' layouts.

Each image is a solid colour encoding its sample key (see ``helpers.colour_of``), so tests
can check that a reader pairs every image with its own text.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .helpers import write_image

HM_SPLITS = {"train": 4, "dev_seen": 2, "dev_unseen": 2, "test_seen": 2, "test_unseen": 1}


def hateful_memes(root: Path) -> Path:
    """``img/<id>.png`` + one jsonl per split; test files without labels."""
    n = 0
    for split, count in HM_SPLITS.items():
        lines = []
        for _ in range(count):
            n += 1
            mid = f"{42000 + n}"
            write_image(root / "img" / f"{mid}.png", f"hm{mid}")
            obj = {"id": int(mid), "img": f"img/{mid}.png", "text": f"meme text {mid}"}
            if not split.startswith("test"):
                obj["label"] = n % 2
            lines.append(json.dumps(obj))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


MMIMDB_SPLITS = {
    "train": ["0000001", "0000002", "0000003"],
    "dev": ["0000004", "0000005"],
    "test": ["0000006", "0000007"],
}
MMIMDB_GENRES = {
    "0000001": ["Drama", "Comedy"],
    "0000002": ["Film-Noir"],
    "0000003": ["Sci-Fi", "News", "Drama"],
    "0000004": ["Horror"],
    "0000005": ["Western", "War"],
    "0000006": ["Short"],
    "0000007": ["Music"],
}


def mmimdb(root: Path) -> Path:
    """``split.json`` + ``dataset/<id>.jpeg`` and ``dataset/<id>.json``."""
    (root / "dataset").mkdir(parents=True, exist_ok=True)
    (root / "split.json").write_text(json.dumps(MMIMDB_SPLITS))
    for mid, genres in MMIMDB_GENRES.items():
        write_image(root / "dataset" / f"{mid}.jpeg", f"mm{mid}")
        meta = {
            "title": f"Movie {mid}",
            "genres": genres,
            "year": 1999,
            "plot": [f"short {mid}", f"the longest plot of movie {mid}", "mid"],
        }
        (root / "dataset" / f"{mid}.json").write_text(json.dumps(meta))
    return root


FOOD_ROWS = {
    "train": [
        ("apple_pie_0.jpg", "Apple Pie, the classic", "apple_pie"),
        ("waffles_3.jpg", "Belgian waffles recipe", "waffles"),
        ("sushi_7.jpg", 'Sushi "rolls" at home', "sushi"),
    ],
    "test": [("pho_1.jpg", "Pho bo", "pho"), ("apple_pie_9.jpg", "Grandma's pie", "apple_pie")],
}


def food101(root: Path) -> Path:
    """``images/<split>/<class>/<file>`` + header-less ``texts/<split>_titles.csv``."""
    (root / "texts").mkdir(parents=True, exist_ok=True)
    for split, rows in FOOD_ROWS.items():
        with (root / "texts" / f"{split}_titles.csv").open("w", newline="") as f:
            csv.writer(f).writerows(rows)
        for file, _, cls in rows:
            write_image(root / "images" / split / cls / file, f"food{file}")
    return root


# VQA: question 1 has the four scored answers of the issue (4, 3, 2, 1 humans).
VQA_Q1_ANSWERS = ["2", "Two", "two", "2.", "a dog.", "dog", "Dog", "red", "Red", "blue"]
VQA_TRAIN = [  # (question_id, image_id, question, multiple_choice_answer, 10 answers)
    (1, 11, "How many dogs?", "2", VQA_Q1_ANSWERS),
    (2, 11, "What animal?", "dog", ["dog"] * 10),
    (3, 12, "What color?", "red", ["red"] * 7 + ["blue"] * 3),
    (4, 13, "What color is the sky?", "blue", ["blue"] * 9 + ["gray"]),
    (5, 13, "Is it day?", "yes", ["yes"] * 10),
    (6, 12, "Is it night?", "2", ["no"] * 5 + ["2"] * 5),
]
VQA_VAL = [(7, 21, "What is it?", "dog", ["dog"] * 8 + ["cat"] * 2)]
VQA_TEST = {"test-dev": [(8, 31, "Where?")], "test": [(8, 31, "Where?"), (9, 32, "Who?")]}


def _coco(root: Path, folder: str, image_id: int) -> None:
    write_image(root / folder / f"COCO_{folder}_{image_id:012d}.jpg", f"coco{folder}{image_id}")


def vqa(root: Path) -> Path:
    """Questions/annotations JSON per split and COCO-named images."""
    root.mkdir(parents=True, exist_ok=True)
    for subtype, rows in (("train2014", VQA_TRAIN), ("val2014", VQA_VAL)):
        qs = [{"image_id": i, "question": q, "question_id": qid} for qid, i, q, _, _ in rows]
        anns = [
            {
                "question_id": qid,
                "image_id": i,
                "question_type": "what",
                "answer_type": "other",
                "multiple_choice_answer": mc,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, a in enumerate(ans)
                ],
            }
            for qid, i, _, mc, ans in rows
        ]
        (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(
            json.dumps({"data_subtype": subtype, "questions": qs})
        )
        (root / f"v2_mscoco_{subtype}_annotations.json").write_text(
            json.dumps({"data_subtype": subtype, "annotations": anns})
        )
        for i in {r[1] for r in rows}:
            _coco(root, subtype, i)
    for split, rows in VQA_TEST.items():
        qs = [{"image_id": i, "question": q, "question_id": qid} for qid, i, q in rows]
        (root / f"v2_OpenEnded_mscoco_{split}2015_questions.json").write_text(
            json.dumps({"questions": qs})
        )
        for _, i, _ in rows:
            _coco(root, "test2015", i)
    return root


def food101_txt(root: Path) -> Path:
    """The original UPMC release: ``images/<split>/<class>/<file>`` + one text file per image
    in ``texts_txt/<class>/<stem>.txt`` (the same samples as :func:`food101`)."""
    for split, rows in FOOD_ROWS.items():
        for file, title, cls in rows:
            write_image(root / "images" / split / cls / file, f"food{file}")
            text = root / "texts_txt" / cls / file.replace(".jpg", ".txt")
            text.parent.mkdir(parents=True, exist_ok=True)
            text.write_text(f"  {title}\n\n")  # whitespace around it, as scraped text has
    return root


def hateful_memes_first_release(root: Path) -> Path:
    """The first release's names: ``train``, ``dev``, ``test`` (.jsonl)."""
    hateful_memes(root)
    (root / "dev_seen.jsonl").rename(root / "dev.jsonl")
    (root / "test_seen.jsonl").rename(root / "test.jsonl")
    for later in ("dev_unseen", "test_unseen"):
        (root / f"{later}.jsonl").unlink()
    return root
