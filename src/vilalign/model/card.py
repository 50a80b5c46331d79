"""The model card: the ``README.md`` beside the weights, as the Hugging Face Hub reads it.

YAML front matter (``library_name: vilalign``, ``tags``, ``datasets``, ``metrics``,
``base_model``) and a short page with what a reader of the checkpoint needs: the preset,
the baseline (the model variant and its layer layout), the training data, the label names
and the results. What the model config knows is always there; the run that trained the
model adds the rest (:class:`CardInfo`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import ModelCardData

from vilalign.config import ModelConfig

LIBRARY = "vilalign"
CARD = "README.md"
#: Label names listed in full up to this many (VQA's vocabulary has 3,129).
SHOWN_LABELS = 20


@dataclass
class CardInfo:
    """What the config cannot say: the preset it came from, the data it was trained on,
    the model it was initialised from, and its results (``{"test/accuracy": 0.968}``)."""

    preset: str | None = None
    datasets: Sequence[str] = ()
    results: Mapping[str, float] = field(default_factory=dict)
    init_from: str | None = None


def baseline_name(config: ModelConfig) -> str:
    """The baseline a config is: its variant, or ``random_text`` for a two-stream model whose
    pretrained text encoder was replaced by a random one (see vilalign.model.baselines)."""
    if config.variant == "vilbert" and config.text.init == "random" and config.text.name_or_path:
        return "random_text"
    return config.variant


def render_model_card(config: ModelConfig, info: CardInfo | None = None) -> str:
    """The card's text: YAML front matter, then the page."""
    info = info or CardInfo()
    lines = [
        "---",
        _metadata(config, info).rstrip(),
        "---",
        "",
        f"# vilalign `{baseline_name(config)}` model",
        "",
        "A two-stream vision-language transformer (ViLBERT-style: a BERT text stream and a",
        "ViT image stream meeting in fusion layers), saved by vilalign.",
        "",
        "| | |",
        "| --- | --- |",
        *_facts(config, info),
        *_labels(config),
        *_results(info.results),
        "## Use",
        "",
        "```python",
        "from vilalign.model import VilbertModel",
        "",
        'model = VilbertModel.from_pretrained("<this folder or Hub repo>")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _metadata(config: ModelConfig, info: CardInfo) -> str:
    # the measures reported (a loss is in the results table, but not a metric to index)
    metrics = sorted({name.rsplit("/", 1)[-1] for name in info.results} - {"loss"})
    data = ModelCardData(
        library_name=LIBRARY,
        tags=[LIBRARY, "vision-language", "two-stream", baseline_name(config)],
        datasets=list(info.datasets) or None,
        metrics=metrics or None,
        # a Hub repo id ("org/name") only: a local folder means nothing to a reader
        base_model=info.init_from if _on_the_hub(info.init_from) else None,
    )
    return data.to_yaml()


def _on_the_hub(name: str | None) -> bool:
    # "runs/pre" is a folder here, though it reads like a repo id
    return bool(name) and "/" in name and is_repo_id(name) and not Path(name).exists()


def is_repo_id(name: str | None) -> bool:
    """Whether ``name`` reads as a Hub repo id ("org/name"), not as a local path."""
    return bool(name) and name.count("/") <= 1 and not name.startswith((".", "/", "~"))


def _facts(config: ModelConfig, info: CardInfo) -> list[str]:
    text = config.text.name_or_path or (
        f"BERT {config.text.num_layers} layers × {config.text.hidden_size}"
    )
    facts = {
        "preset": f"`{info.preset}`" if info.preset else "—",
        "baseline": f"`{baseline_name(config)}`",
        "text stream": f"{text} ({config.text.init} init)",
        "image stream": f"timm `{config.image.model_name}`, {config.image.img_size} px",
        "fusion layers": ", ".join(config.layer_kinds) or "none",
        "pooling / fusion": f"{config.pooling} / {config.fusion}",
        "task head": f"{config.num_labels} output(s)" if config.num_labels else "none",
        "trained on": ", ".join(info.datasets) or "—",
        "initialised from": f"`{info.init_from}`" if info.init_from else "—",
    }
    return [f"| {k} | {v} |" for k, v in facts.items()] + [""]


def _labels(config: ModelConfig) -> list[str]:
    names = config.label_names
    if not names:
        return []
    shown = ", ".join(f"`{n}`" for n in names[:SHOWN_LABELS])
    more = f" … ({len(names)} in all, in `config.json`)" if len(names) > SHOWN_LABELS else ""
    return ["## Labels", "", f"In output order: {shown}{more}.", ""]


def _results(results: Mapping[str, float]) -> list[str]:
    if not results:
        return []
    rows = [f"| {name} | {value:.4f} |" for name, value in sorted(results.items())]
    return ["## Results", "", "| metric | value |", "| --- | --- |", *rows, ""]
