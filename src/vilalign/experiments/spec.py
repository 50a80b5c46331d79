"""Experiment files: a base run configuration plus a grid of overrides.

An experiment file (YAML or JSON) names what is shared by every run (``preset``,
``model``), the base pretraining and fine-tuning run files (``pretrain``, ``finetune``),
the grid (baselines, pretraining objective subsets, co-attention placements, datasets,
seeds and any further named axes), the analyses run after every epoch, where results go,
optionally the run store and an Optuna search space, and published Hugging Face models to
measure beside the cells (``published``). :func:`expand_grid` turns it
into :class:`Cell` objects whose run configs are fully validated, so a bad value fails
when the file is read, naming the file and the cell — not an hour into the grid.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from vilalign.analysis.spec import AlignmentOptions, sample_count
from vilalign.config import (
    PRESETS,
    ConfigError,
    StrictModel,
    deep_merge,
    read_mapping,
    validate,
)
from vilalign.io import safe_name
from vilalign.model import BASELINES, fusion_layer_type
from vilalign.train.config import FinetuneConfig, PretrainConfig
from vilalign.train.objectives import OBJECTIVES, default_weights

NO_PRETRAINING = "none"
BUILTIN_AXES = ("baseline", "pretraining", "coattention", "dataset", "seed")


class GridConfig(StrictModel):
    """The axes of the grid; every combination is one cell (one fine-tuning run)."""

    baselines: list[str] = Field(
        default_factory=lambda: ["vilbert"],
        description=f"Model variants by name: {', '.join(BASELINES)}.",
    )
    pretraining: list[str] = Field(
        default_factory=lambda: [NO_PRETRAINING],
        description="Objective subsets before fine-tuning: 'none' (no pretraining), 'all' "
        "(the objectives on by default: mlm+mim+ap) or objective names joined by '+', e.g. "
        "'mlm+ap', 'ap'.",
    )
    coattention_layers: list[list[int]] | None = Field(
        None,
        description="Co-attention placements to compare (fusion-layer indices); None: the "
        "model's own. Ignored (collapsed) for baselines without co-attention.",
    )
    datasets: list[str | dict[str, Any]] | None = Field(
        None,
        description="Fine-tuning datasets: names, or data mappings such as "
        "{name: hateful_memes, root: data/hm}; the task is the dataset's name. "
        "None: the base fine-tuning run's data.",
    )
    seeds: list[int] = Field(default_factory=lambda: [0])
    axes: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="Further axes: axis name -> {label: overrides}, where overrides may set "
        "'model', 'pretrain' and 'finetune' (merged onto the base).",
    )

    @field_validator("baselines", "pretraining", "coattention_layers", "datasets", "seeds")
    @classmethod
    def _not_empty(cls, value: list | None, info: ValidationInfo) -> list | None:
        # An empty axis makes a grid of no cells: the run would end at once, "successfully",
        # with an empty report.
        if value is not None and not value:
            raise ValueError(
                f"grid.{info.field_name} is empty, so the grid has no cells; list at least "
                "one value (or leave the field out for its default)"
            )
        return value

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, value: list[str]) -> list[str]:
        bad = [b for b in value if b not in BASELINES]
        if bad:
            raise ValueError(f"unknown baseline(s) {bad} (allowed: {', '.join(BASELINES)})")
        return value

    @field_validator("pretraining")
    @classmethod
    def _known_objectives(cls, value: list[str]) -> list[str]:
        for subset in value:
            objective_names(subset)  # raises naming the bad name
        return value

    @field_validator("axes")
    @classmethod
    def _axis_keys(cls, value: dict[str, dict[str, dict[str, Any]]]) -> dict:
        for axis, choices in value.items():
            if axis in BUILTIN_AXES:
                raise ValueError(f"axis {axis!r} is built in; use its own field")
            if not choices:
                raise ValueError(f"axis {axis!r} has no values")
            for label, overrides in choices.items():
                bad = set(overrides) - {"model", "pretrain", "finetune"}
                if bad:
                    raise ValueError(
                        f"axis {axis!r}, value {label!r}: unknown section(s) {sorted(bad)} "
                        "(allowed: model, pretrain, finetune)"
                    )
        return value


class AnalysisConfig(AlignmentOptions):
    """What is measured during and after fine-tuning.

    The alignment fields are :class:`~vilalign.analysis.spec.AlignmentOptions`' (with
    this section's defaults); the others choose the analyses of the final model.
    """

    every_epoch: bool = Field(True, description="Alignment per layer after every epoch.")
    split: str = Field("test", description="Split the analyses read (never trained on).")
    n_samples: sample_count(4) = Field(
        256, description="Samples measured: the first N of the split, or 'all'."
    )
    null_band: int = Field(
        0,
        ge=0,
        description="Permutations for a separate nulls_epoch<N>.csv band file (older "
        "reports read it); 0: none — every table row carries its null band already.",
    )
    attention: bool = Field(True, description="Attention entropy of the final model.")
    attention_samples: int = Field(128, ge=1)
    attribution_examples: int = Field(3, ge=0, description="Relevancy maps to draw; 0: none.")
    attribution_method: Literal["relevancy", "gradcam", "integrated_gradients"] = "relevancy"


class TrackingConfig(StrictModel):
    """The MLflow run store (used by ``vilalign run`` and the demo)."""

    enabled: bool = True
    uri: str | None = Field(
        None, description="Tracking URI; default sqlite:///<output_dir>/mlflow.db."
    )
    experiment: str | None = Field(None, description="MLflow experiment; default: the name.")


class ParamSpace(StrictModel):
    """One searched parameter; the key it is stored under is a dotted path into a cell."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical parameter needs 'choices'")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"{self.type} parameter needs low <= high")
        return self


class ObjectiveSpec(StrictModel):
    """A value to optimise: a metric of the fine-tuning run (``val/...``, ``test/...`` or
    ``align/<layer>/<view>/<measure>``), optionally of one dataset of the grid."""

    metric: str
    direction: Literal["maximize", "minimize"] = "maximize"
    dataset: str | None = None


class TuneConfig(StrictModel):
    """An Optuna study over the base cell (first value of every grid axis)."""

    study_name: str | None = Field(None, description="Default: the experiment's name.")
    storage: str | None = Field(
        None, description="RDB URL; default sqlite:///<output_dir>/optuna.db."
    )
    n_trials: int = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="Seconds for this invocation.")
    objectives: list[ObjectiveSpec] = Field(
        default_factory=lambda: [ObjectiveSpec(metric="val/accuracy")], min_length=1
    )
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Single-objective only (Optuna cannot prune multi-objective)."
    )
    startup_trials: int = Field(
        2, ge=0, description="Median pruner: trials completed before any is pruned."
    )
    warmup_epochs: int = Field(0, ge=0, description="Median pruner: epochs never pruned.")
    prune_metric: str | None = Field(
        None, description="Per-epoch metric reported for pruning; default: first objective."
    )
    seed: int = 0
    space: dict[str, ParamSpace] = Field(
        default_factory=dict,
        description="Dotted path -> range, e.g. 'finetune.optim.lr': "
        "{type: float, low: 1e-5, high: 1e-3, log: true}.",
    )

    @field_validator("space")
    @classmethod
    def _paths(cls, value: dict[str, ParamSpace]) -> dict[str, ParamSpace]:
        for path in value:
            if path.split(".")[0] not in ("model", "pretrain", "finetune"):
                raise ValueError(f"space: {path!r} must start with model., pretrain. or finetune.")
        return value


class PublishedModel(StrictModel):
    """A published Hugging Face model measured beside the cells (docs/adapters.md)."""

    name: str = Field(..., min_length=1, description="Hub name or saved folder (--hf-model).")
    label: str | None = Field(
        None, description="Its name in tables and the report; default: the name's last part."
    )
    regions: str | None = Field(None, description="LXMERT / VisualBERT: region-feature file.")
    at_init: bool = Field(
        False,
        description="Also measure its config with fresh weights (the at-initialisation "
        "reference), as '<label>@init'.",
    )

    @property
    def run_label(self) -> str:
        return self.label or Path(self.name).name


class ExperimentConfig(StrictModel):
    """An experiment file: see the module docstring."""

    name: str = Field(..., min_length=1)
    description: str = ""
    output_dir: str | None = Field(None, description="Default: runs/<name>.")
    preset: str = Field("tiny", description=f"Model preset: {', '.join(PRESETS)}.")
    model: dict[str, Any] = Field(
        default_factory=dict, description="Model overrides shared by pretraining and fine-tuning."
    )
    pretrain: dict[str, Any] = Field(
        default_factory=dict, description="Base pretraining run (a PretrainConfig mapping)."
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict, description="Base fine-tuning run (a FinetuneConfig mapping)."
    )
    grid: GridConfig = GridConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    tracking: TrackingConfig = TrackingConfig()
    tune: TuneConfig | None = None
    published: list[PublishedModel] = Field(
        default_factory=list,
        description="Published models measured on the cells' datasets, drawn beside them.",
    )

    @field_validator("published")
    @classmethod
    def _unique_labels(cls, value: list[PublishedModel]) -> list[PublishedModel]:
        labels = [m.run_label for m in value]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"published: label(s) {dup} used twice; give each a label")
        return value

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value not in PRESETS:
            raise ValueError(f"unknown preset {value!r} (allowed: {', '.join(PRESETS)})")
        return value

    @field_validator("pretrain", "finetune")
    @classmethod
    def _no_shared_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        shared = sorted({"preset", "model"} & set(value))
        if shared:
            raise ValueError(
                f"{shared}: set these at the top level (shared by pretraining and fine-tuning, "
                "so the pretrained weights fit the fine-tuned model)"
            )
        return value

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


# ---------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One grid point: its name, the axis labels, and validated run configs."""

    key: str  # folder name, unique in the grid, e.g. "vilbert_pt-mlm+ap_easyvqa_s0"
    group: str  # the key without the seed: cells that differ only by seed
    labels: dict[str, str]  # axis -> label (seed included)
    seed: int
    finetune: FinetuneConfig
    pretrain: PretrainConfig | None = None
    pretrain_key: str | None = None  # shared pretraining folder, None: no pretraining
    info: dict[str, Any] = field(default_factory=dict)
    # What the cell's results depend on (see cell_settings); its folder records it.
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def settings_hash(self) -> str:
        return settings_hash(self.settings)


def objective_names(subset: str) -> list[str]:
    """``'all'`` → every registered objective on by default (mlm, mim, ap; ITC is opt-in:
    see ItcConfig); ``'mlm+ap'`` → mlm, ap; ``'none'`` → nothing."""
    if subset == NO_PRETRAINING:
        return []
    if subset == "all":
        return [name for name, weight in default_weights().items() if weight > 0]
    names = [n.strip() for n in subset.split("+")]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or not names:
        raise ValueError(
            f"pretraining subset {subset!r}: unknown objective(s) {bad} "
            f"(use 'none', 'all' or names from {', '.join(OBJECTIVES)} joined by '+')"
        )
    return names


def objectives_overrides(base: Mapping[str, Any], subset: str) -> dict[str, Any]:
    """Objective weights for ``subset``: chosen terms keep their base weight (1.0 if it was
    0), the others get 0."""
    chosen = set(objective_names(subset))
    out = {}
    for name, default in default_weights().items():
        weight = float((base.get(name) or {}).get("weight", default))
        out[name] = {"weight": (weight or 1.0) if name in chosen else 0.0}
    return out


def load_experiment(path: str | Path, **overrides: Any) -> ExperimentConfig:
    """Read and validate an experiment file (errors name the file and the field)."""
    data = deep_merge(read_mapping(path), overrides)
    exp = validate(ExperimentConfig, data, source=str(path))
    expand_grid(exp, source=str(path))  # every cell must validate now, not mid-grid
    return exp


def _dataset_entry(entry: str | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = {"name": entry} if isinstance(entry, str) else dict(entry)
    if "name" not in data:
        raise ConfigError(f"grid.datasets: entry {entry!r} needs a 'name'")
    return str(data["name"]), data


def _axes(exp: ExperimentConfig) -> list[tuple[str, list[tuple[str, Any]]]]:
    """(axis, [(label, value)]) in a fixed order; the seed axis is last."""
    g = exp.grid
    axes: list[tuple[str, list[tuple[str, Any]]]] = [
        ("baseline", [(b, b) for b in g.baselines]),
        ("pretraining", [(p, p) for p in g.pretraining]),
    ]
    if g.coattention_layers is not None:
        axes.append(("coattention", [(_layers_label(c), c) for c in g.coattention_layers]))
    if g.datasets is not None:
        entries = [_dataset_entry(d) for d in g.datasets]
        axes.append(("dataset", [(name, (name, data)) for name, data in entries]))
    axes += [(name, list(choices.items())) for name, choices in g.axes.items()]
    axes.append(("seed", [(str(s), s) for s in g.seeds]))
    return axes


def _layers_label(layers: list[int]) -> str:
    return "-".join(map(str, layers)) if layers else "none"


def expand_grid(exp: ExperimentConfig, source: str = "<experiment>") -> list[Cell]:
    """Every cell of the grid, in order; cells that resolve to the same runs appear once."""
    axes = _axes(exp)
    cells: dict[str, Cell] = {}
    for combo in itertools.product(*(values for _, values in axes)):
        choice = {axis: pair for (axis, _), pair in zip(axes, combo, strict=True)}
        cell = _make_cell(exp, choice, source)
        first = cells.setdefault(cell.key, cell)
        if first is not cell and (first.finetune, first.pretrain) != (cell.finetune, cell.pretrain):
            # Same folder name, different runs (e.g. two datasets entries with one name, or
            # axis labels equal once made file-name safe): one would silently be dropped.
            raise ConfigError(
                f"{source}: cells {first.labels} and {cell.labels} differ but share the "
                f"name {cell.key!r}; give their axis values distinct labels"
            )
    return list(cells.values())


def _make_cell(exp: ExperimentConfig, choice: dict[str, tuple[str, Any]], source: str) -> Cell:
    model = dict(exp.model)
    pretrain, finetune = dict(exp.pretrain), dict(exp.finetune)
    labels = {axis: label for axis, (label, _) in choice.items()}
    if "coattention" in choice:
        model = deep_merge(model, {"coattention_layers": choice["coattention"][1]})
    baseline = choice["baseline"][1]
    model = deep_merge(model, BASELINES[baseline])
    if "coattention" in choice and BASELINES[baseline].get("coattention_layers") == []:
        labels["coattention"] = "none"  # the axis means nothing without co-attention
    if "dataset" in choice:
        name, data = choice["dataset"][1]
        finetune = deep_merge(finetune, {"data": data, "task": name})
    for axis, (_, overrides) in choice.items():
        if axis in BUILTIN_AXES:
            continue
        model = deep_merge(model, overrides.get("model", {}))
        pretrain = deep_merge(pretrain, overrides.get("pretrain", {}))
        finetune = deep_merge(finetune, overrides.get("finetune", {}))
    seed = choice["seed"][1]
    subset = choice["pretraining"][1]
    where = f"{source}, cell {labels}"
    ft_cfg = _validate_run(FinetuneConfig, exp, model, finetune, seed, where)
    pt_cfg = pt_key = None
    if subset != NO_PRETRAINING:
        pretrain = deep_merge(
            pretrain, {"objectives": objectives_overrides(pretrain.get("objectives", {}), subset)}
        )
        pt_cfg = _validate_run(PretrainConfig, exp, model, pretrain, seed, where)
        pt_key = f"{baseline}_pt-{subset}_s{seed}_{config_hash(pt_cfg)}"
    key = cell_key(labels)
    group = cell_key({k: v for k, v in labels.items() if k != "seed"})
    settings = cell_settings(exp, ft_cfg, pt_cfg)
    return Cell(key, group, labels, seed, ft_cfg, pt_cfg, pt_key, settings=settings)


def _validate_run(kind, exp, model, run, seed, where):
    data = deep_merge(run, {"preset": exp.preset, "model": model, "train": {"seed": seed}})
    cfg = validate(kind, data, source=f"{where} ({kind.__name__})")
    for layer_kind in cfg.model.layer_kinds:  # the registry is the model's, not the config's
        try:
            fusion_layer_type(layer_kind)
        except ValueError as err:
            raise ConfigError(f"{where}: model.fusion_layers: {err}") from None
    return cfg


def cell_key(labels: Mapping[str, str]) -> str:
    """A readable, file-name-safe name: ``vilbert_pt-ap_ca-1-3_easyvqa_lr-low_s0``."""
    prefix = {
        "baseline": "",
        "pretraining": "pt-",
        "coattention": "ca-",
        "dataset": "",
        "seed": "s",
    }
    parts = [f"{prefix.get(axis, axis + '-')}{label}" for axis, label in labels.items()]
    return safe_name("_".join(parts), keep="+.=-")


#: Fields of a run config that say where and how visibly it runs, not what it computes:
#: left out of a run's identity, so finishing a grid on another device (or without
#: progress bars) reuses what is done. (train.num_workers stays in: collation draws may
#: happen in the workers.)
RUNTIME_FIELDS = (
    ("train", "device"),
    ("train", "progress"),
    ("train", "distributed", "timeout_s"),
)


def run_identity(cfg: Any) -> dict[str, Any]:
    """A run config's resolved settings without :data:`RUNTIME_FIELDS`: what its results
    depend on. ``cfg`` is a config model or its JSON dump (a run folder's config.json)."""
    data = json.loads(cfg.model_dump_json()) if hasattr(cfg, "model_dump_json") else cfg
    data = json.loads(json.dumps(data))  # a copy
    for path in RUNTIME_FIELDS:
        node = data
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return data


def settings_hash(settings: Any) -> str:
    """8 hex digits of JSON-able settings (sorted keys)."""
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def config_hash(cfg: Any) -> str:
    """8 hex digits of a run's identity (:func:`run_identity`): two cells share a
    pretraining run iff equal. Runtime fields are left out, so a pretraining folder is
    found again whatever device finishes the grid; folders named by earlier versions (whose
    hash included them) are found by their config.json (see the runner)."""
    return settings_hash(run_identity(cfg))


def normalised_settings(recorded: dict[str, Any]) -> dict[str, Any] | None:
    """Recorded cell settings read by today's schemas (a field added since gets its
    default, as the recorded run had it implicitly), or None when they no longer
    validate: comparable with :func:`cell_settings` of a cell of today's grid."""
    from pydantic import ValidationError

    try:
        pretrain = recorded.get("pretrain")
        return {
            "finetune": run_identity(FinetuneConfig.model_validate(recorded["finetune"])),
            "pretrain": run_identity(PretrainConfig.model_validate(pretrain))
            if pretrain is not None
            else None,
            "analysis": json.loads(
                AnalysisConfig.model_validate(recorded["analysis"]).model_dump_json()
            ),
        }
    except (KeyError, TypeError, ValidationError):
        return None


def cell_settings(exp: ExperimentConfig, finetune: Any, pretrain: Any | None) -> dict[str, Any]:
    """What a cell's results depend on: its fine-tuning and pretraining runs' identities
    and the analyses measured during and after fine-tuning."""
    return {
        "finetune": run_identity(finetune),
        "pretrain": run_identity(pretrain) if pretrain is not None else None,
        "analysis": json.loads(exp.analysis.model_dump_json()),
    }
