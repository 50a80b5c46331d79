"""What an alignment analysis measures: one spec, read by every caller.

:class:`AlignmentOptions` owns the fields — which samples, views, measures and
statistics, the measure of the layer×layer matrix, the captions mode — and their
validation against the measure registry. The files extend it with their own context:
the run files' ``alignment:`` section (``EpochAlignmentConfig``, multi-dataset
fine-tuning) and the experiment files' ``analysis:`` section (``AnalysisConfig``);
``vilalign analyse`` fills it from its flags. :class:`AlignmentSpec` adds where to
measure (data, split, text length, seed); it is what
:func:`~vilalign.analysis.pipeline.run_alignment` and the epoch callback take.

This module stays light (pydantic only): configuration files import it, and the measure
registry (torch, scipy) is imported only when a spec is validated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from vilalign.analysis.defaults import (
    DEFAULT_MEASURES,
    DEFAULT_MEMORY_GB,
    DEFAULT_PERMUTATIONS,
    DEFAULT_RESAMPLES,
)
from vilalign.config import StrictModel
from vilalign.data.config import DataConfig

#: The layer×layer matrix's measure when no pooled measure is requested.
FALLBACK_HEATMAP = "cka_unbiased"
POOLED_VIEWS = ("cls", "mean")


def sample_count(minimum: int) -> Any:
    """The type of a number of samples (at least ``minimum``) or "all": the whole split
    (collected to a disk-backed store when it does not fit the memory budget)."""

    def check(value: int | str) -> int | str:
        if value != "all" and value < minimum:
            raise PydanticCustomError(
                "greater_than_equal", "Input should be greater than or equal to {ge}",
                {"ge": minimum},
            )  # fmt: skip
        return value

    return Annotated[int | Literal["all"], AfterValidator(check)]


SampleCount = sample_count(2)
#: The bytes one block row of a blocked form over N columns needs, per column: a float64
#: similarity or kernel value and its working copies (see measures/budget.py).
_BLOCK_ROW_BYTES = 96


@dataclass(frozen=True)
class StatsOptions:
    """Permutations for p-values and resamples for intervals; 0 turns either off."""

    permutations: int = DEFAULT_PERMUTATIONS
    resamples: int = DEFAULT_RESAMPLES
    confidence: float = 0.95
    seed: int = 0


class AlignmentOptions(StrictModel):
    """What to measure: the one owner of these fields and of their validation."""

    n_samples: SampleCount = Field(
        500, description="Samples measured: the first N of the split, or 'all'."
    )
    views: list[Literal["cls", "mean", "tokens"]] = Field(
        default_factory=lambda: ["cls", "mean"], min_length=1
    )
    measures: list[str] = Field(default_factory=lambda: list(DEFAULT_MEASURES), min_length=1)
    include_encoders: bool = Field(True, description="Encoder layers in the layer matrix.")
    permutations: int = Field(
        DEFAULT_PERMUTATIONS,
        ge=0,
        description="Permutation-null size behind each p-value, chance level and null band; "
        "0: none.",
    )
    resamples: int = Field(
        DEFAULT_RESAMPLES,
        ge=0,
        description="Half-samples behind each measure's registered interval; 0: none.",
    )
    batch_size: int = Field(64, ge=1)
    heatmap_measure: str | None = Field(
        None,
        validate_default=True,
        description="Measure of the layer x layer matrix; default: the first pooled measure "
        f"of 'measures' that allows unequal widths ({FALLBACK_HEATMAP} if there is none).",
    )
    captions: Literal["each", "average"] = Field(
        "each",
        description="Several captions per image (Karpathy COCO / Flickr30k): 'each' measures "
        "every caption as a sample; 'average' first averages each image's rows (both "
        "streams), one per image.",
    )
    memory_gb: float = Field(
        DEFAULT_MEMORY_GB,
        gt=0,
        description="Memory the measures may use for N×N matrices and working blocks (GB); "
        "above it they use blocked or feature-space forms, and collection spills to disk.",
    )

    @field_validator("measures")
    @classmethod
    def _known_measures(cls, value: list[str]) -> list[str]:
        # Checked when the file is read, not at the end of the first epoch (or of
        # training), where a misspelt name would otherwise first fail.
        from vilalign.analysis.measures import get_measure

        for name in value:
            get_measure(name)  # raises naming the unknown measure and the known ones
        return value

    @field_validator("heatmap_measure")
    @classmethod
    def _heatmap(cls, value: str | None, info: ValidationInfo) -> str | None:
        """The one asked for, else the first pooled measure that compares layers of any
        widths (the matrix pairs encoder and fusion layers), else the fallback."""
        from vilalign.analysis.measures import MEASURES, POOLED, get_measure

        if value is not None:
            if get_measure(value).level != POOLED:
                raise ValueError(f"{value} is token-level; the layer matrix compares pooled views")
            return value
        measures = info.data.get("measures", [])  # (absent: measures failed validation)
        fits = (m for m in measures if m in MEASURES and not MEASURES[m].equal_dims)
        return next(fits, FALLBACK_HEATMAP)

    @model_validator(mode="after")
    def _consistent(self) -> AlignmentOptions:
        if self.captions == "average" and "tokens" in self.views:
            raise ValueError("captions: 'average' works on pooled views; drop 'tokens'")
        self._every_measure_has_its_view()
        if self.n_samples != "all":  # "all": checked once the split's size is known
            self._enough_samples()
            self._enough_memory()
        return self

    def sample_count(self, available: int) -> int:
        """How many of ``available`` samples this analysis measures."""
        return available if self.n_samples == "all" else min(self.n_samples, available)

    def _enough_memory(self) -> None:
        # A block of a blocked form holds at least one row of N values; a budget below
        # that would fail after the whole collection, so it is refused here.
        from vilalign.analysis.measures import get_measure

        wide = [n for n in self.measures if get_measure(n).blocks_over_n]
        need = _BLOCK_ROW_BYTES * int(self.n_samples) / 1e9
        if wide and self.memory_gb < need:
            raise ValueError(
                f"memory_gb: {self.memory_gb:g} GB is too small for {', '.join(wide)} at "
                f"n_samples={self.n_samples}: one block row of N values needs {need:.3g} GB"
            )

    def _every_measure_has_its_view(self) -> None:
        """A measure whose level no requested view gives would silently measure nothing."""
        from vilalign.analysis.measures import POOLED, get_measure

        pooled, tokens = any(v in POOLED_VIEWS for v in self.views), "tokens" in self.views
        for name in self.measures:
            if get_measure(name).level == POOLED and not pooled:
                raise ValueError(f"measures: {name} needs a pooled view (cls or mean) in views")
            if get_measure(name).level != POOLED and not tokens:
                raise ValueError(f"measures: {name} is token-level; it needs 'tokens' in views")

    def _enough_samples(self) -> None:
        # A k-NN measure needs k < N (self is not its own neighbour), an unbiased HSIC
        # N > 3, and the half-samples of an interval as much again; found here, before
        # any collection, not after the first epoch of training.
        from vilalign.analysis.measures import get_measure
        from vilalign.analysis.stats import check_interval_possible

        for name in self.measures:
            measure = get_measure(name)
            need = measure.min_samples()
            if self.n_samples < need:
                k = measure.defaults.get("k")
                what = f"k={k} neighbours" if isinstance(k, int) else "its estimator"
                raise ValueError(
                    f"n_samples: {self.n_samples} is too few for {name} ({what} among "
                    f"{self.n_samples} rows); use at least {need}"
                )
            if self.resamples:
                try:
                    check_interval_possible(measure, self.n_samples, what="an interval")
                except ValueError as err:
                    raise ValueError(f"n_samples: {err} (or set resamples: 0)") from None

    def options(self) -> dict[str, Any]:
        """These fields alone (a section's own fields dropped), to build a spec from."""
        return {name: getattr(self, name) for name in AlignmentOptions.model_fields}

    def spec(self, data: DataConfig, split: str, max_length: int, seed: int) -> AlignmentSpec:
        """The spec of one analysis: these options on ``split`` of ``data``."""
        return AlignmentSpec(data, split, max_length=max_length, seed=seed, **self.options())


class AlignmentSpec(AlignmentOptions):
    """One analysis: the options, and where to measure (``split`` of ``data``).

    ``max_length`` is the text length the model was built for; ``seed`` seeds the
    permutations and resamples.
    """

    data: DataConfig
    split: str
    max_length: int = Field(32, gt=1)
    seed: int = 0

    def __init__(
        self, data: DataConfig | None = None, split: str | None = None, /, **fields: Any
    ) -> None:
        # ``AlignmentSpec(data, split, n_samples=...)``, as well as all by keyword.
        given = {"data": data, "split": split}
        super().__init__(**{k: v for k, v in given.items() if v is not None}, **fields)

    @property
    def stats(self) -> StatsOptions:
        return StatsOptions(self.permutations, self.resamples, seed=self.seed)
