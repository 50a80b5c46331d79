"""What each output of a task head means, for everything that shows one (explanations,
attention pages, predictions, reports): ``ModelConfig.label_names`` read one way."""

from __future__ import annotations

from vilalign.config import ModelConfig


def output_names(config: ModelConfig) -> list[str]:
    """The name of every head output: the label names saved with the model, else
    ``class N``. A binary head's one output is the score of its positive class (the
    second of its two names)."""
    names = config.label_names
    if config.num_labels == 1:
        return [names[1] if names else "class 1"]
    if names is None:
        return [f"class {i}" for i in range(config.num_labels)]
    return list(names)


def output_name(config: ModelConfig, index: int) -> str:
    """The name of output ``index`` (``class N`` when unnamed or out of range)."""
    names = output_names(config)
    return names[index] if 0 <= index < len(names) else f"class {index}"
