"""The model card of a trained model: what its run knows (preset, data, initialisation,
test results) for :func:`vilalign.model.save_pretrained` to write beside the weights."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from vilalign.model.card import CardInfo

CONFIG_FILE = "config.json"  # the resolved run config every run folder holds


def run_card(run_dir: str | Path, test: Mapping[str, float]) -> CardInfo:
    """The card facts of the run in ``run_dir`` (its resolved ``config.json``) with the
    ``test`` metrics as the results."""
    config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    datasets = [config["data"]["name"]] if "data" in config else []
    datasets += [entry["data"]["name"] for entry in config.get("datasets", {}).values()]
    return CardInfo(
        preset=config.get("preset"),
        datasets=list(dict.fromkeys(datasets)),
        results=dict(test),
        init_from=config.get("init_from"),
    )
