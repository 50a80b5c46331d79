"""Sub-commands of ``vilalign`` and the options they share.

Each command is a module with ``add_parser(subparsers)`` (one or more commands). An option
that means the same thing on several commands (``--output-dir``, ``--set``, ``--device``,
``--threads``, ``--no-progress``, ``-v``) is declared here, once; a command only says which
ones it takes. Building the parsers must stay light (argparse, pathlib, yaml, the pydantic
config module): ``vilalign --help`` imports no torch, so library imports live inside the
handlers and in the helpers at the bottom of this file.
"""

from __future__ import annotations

import argparse
import importlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vilalign.data import DataConfig

# Order = order in `vilalign --help`.
COMMANDS = (
    "demo", "training", "run", "tune", "analyse", "attention", "explain", "predict", "report",
    "info", "data", "cache",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    for name in COMMANDS:
        importlib.import_module(f"vilalign.commands.{name}").add_parser(subparsers)


# ---------------------------------------------------------------------------- parsers


class HelpFormatter(argparse.HelpFormatter):
    """Ends every option's help with its default, read from the option itself, so the help
    cannot drift from what the command does. Flags, positionals and options whose default
    is None or empty (their help says what happens) get nothing added; a list default is
    written as it is typed (``tiny base``, not ``['tiny', 'base']``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or not action.option_strings or action.nargs == 0:
            return text
        default = action.default
        if default in (None, argparse.SUPPRESS, "") or default == [] or default == ():
            return text
        if isinstance(default, (list, tuple)):  # (% escaped: argparse expands the help)
            typed = " ".join(map(str, default)).replace("%", "%%")
            return f"{text} (default: {typed})"
        return f"{text} (default: %(default)s)"


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A sub-command parser with the shared help format and ``-v``."""
    p = sub.add_parser(
        name, aliases=list(aliases), help=help, description=description,
        formatter_class=HelpFormatter,
    )  # fmt: skip
    # SUPPRESS: a sub-command's default must not overwrite `vilalign -v CMD`.
    add_verbose(p, default=argparse.SUPPRESS)
    return p


def add_verbose(p: argparse.ArgumentParser, default: Any = False) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log debug messages, and show the traceback of an error",
    )


class DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: hidden from --help, still works, and warns
    (a FutureWarning: deprecations meant for the users of an application)."""

    def __init__(self, option_strings: list[str], dest: str, use: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        warnings.warn(
            f"{option_string} is deprecated and will be removed in the next release; "
            f"use {self.use}",
            FutureWarning,
            stacklevel=2,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    p: argparse.ArgumentParser, flag: str, use: str, dest: str, type: Any = Path
) -> None:
    p.add_argument(
        flag, action=DeprecatedAlias, use=use, dest=dest, type=type,
        default=argparse.SUPPRESS, help=argparse.SUPPRESS,
    )  # fmt: skip


def add_output_dir(
    p: argparse.ArgumentParser, default: Path | None, help: str, old: Sequence[str] = ()
) -> None:
    """``--output-dir DIR`` (``old``: earlier spellings, kept as deprecated aliases)."""
    p.add_argument("--output-dir", type=Path, default=default, metavar="DIR", help=help)
    for flag in old:
        add_deprecated_alias(p, flag, "--output-dir", dest="output_dir")


def add_overrides(p: argparse.ArgumentParser, target: str, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable): a field of ``target``, parsed by parse_overrides."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field of {target}: dotted path = YAML value; repeatable (e.g. {example})",
    )


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DEVICE_HELP = "where the model runs: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N"


def device_name(value: str) -> str:
    """``--device`` checked by its spelling (whether it exists is checked when used)."""
    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a device (use auto, cpu, cuda, cuda:N or mps)"
        )
    return value


def add_device(
    p: argparse.ArgumentParser, default: str | None = "auto", help: str = DEVICE_HELP
) -> None:
    p.add_argument("--device", type=device_name, default=default, metavar="DEVICE", help=help)


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"needs a number >= 1, got {number}")
    return number


def add_threads(
    p: argparse.ArgumentParser,
    help: str = "torch CPU threads; 1 is fastest on a CPU shared with other jobs "
    "(default: torch's choice, one per core)",
) -> None:
    p.add_argument("--threads", type=positive_int, metavar="N", help=help)


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars"
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--preset and --baseline, shared by the commands that build a model."""
    from vilalign.config import PRESETS  # (pydantic, no torch)

    p.add_argument("--preset", default="tiny", help=f"model preset: {', '.join(PRESETS)}")
    # The names are BASELINES' keys (vilalign.model.baselines), written out because importing
    # vilalign.model loads torch; test_info_help_names_every_baseline keeps them equal.
    p.add_argument(
        "--baseline",
        default="vilbert",
        help="vilbert, no_coattention, concat_features, random_text, single_stream, "
        "text_only or image_only",
    )


DATASET_HELP = "dataset name, e.g. easyvqa, hateful_memes, mmimdb, food101, vqa (`vilalign data list` shows all, with their splits)"  # noqa: E501
ROOT_HELP = "dataset folder (not needed for easyvqa)"


def add_source_args(p: argparse.ArgumentParser, published: bool = False) -> None:
    """The model (--checkpoint or --preset, --set; with ``published`` also --hf-model), the
    data, and where it runs: shared by the analysis commands."""
    from vilalign.config import PRESETS

    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="a model folder written by save_pretrained"
    )
    src.add_argument(
        "--preset",
        help=f"use a freshly built (untrained) model of this preset: {', '.join(PRESETS)}",
    )
    if published:
        src.add_argument(
            "--hf-model",
            metavar="NAME_OR_FOLDER",
            help="a published Hugging Face model, by hub name or saved folder: BridgeTower, "
            "ViLT, CLIP, SigLIP, LXMERT, VisualBERT (docs/adapters.md); read with its own "
            "processor (HF_HUB_OFFLINE=1: nothing is downloaded)",
        )
        p.add_argument(
            "--regions",
            type=Path,
            metavar="FILE",
            help="--hf-model LXMERT / VisualBERT: the region-feature file (.npz, or a folder "
            "of .npy) they read instead of pixels; vilalign runs no detector",
        )
    add_overrides(p, "the --preset's model config", "--set model.depth=2")
    p.add_argument("--dataset", default="easyvqa", help=DATASET_HELP)
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--split", default="test", help="split to read")
    p.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="samples per forward pass"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the untrained --preset model's weights and of the statistics' draws",
    )
    add_device(p)
    add_threads(p)
    add_no_progress(p)


# ---------------------------------------------------------------------------- helpers


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.epochs=2", "model.depth=2"]`` → nested dict with YAML-parsed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {key}: {raw!r} is not a YAML value ({err})") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part!r} is already set to a value")
        node[parts[-1]] = value
    return out


def run_file_overrides(args: argparse.Namespace, train_paths: Sequence[str]) -> dict[str, Any]:
    """--set, plus --device and --no-progress as the ``device`` / ``progress`` fields of the
    train section(s) of the file (``train_paths``: their dotted paths, e.g. ``["train"]`` in
    a run file); an explicit --set wins. Both fields are runtime fields: they change no
    result, so no run's identity (see ``experiments.spec.RUNTIME_FIELDS``)."""
    items = []
    for train in train_paths:
        if getattr(args, "device", None) is not None:
            check_device(args.device)
            items.append(f"{train}.device={args.device}")
        if not getattr(args, "progress", True):
            items.append(f"{train}.progress=false")
    return parse_overrides([*items, *args.overrides])


def apply_threads(args: argparse.Namespace) -> None:
    """--threads, for every command that has it (before any work)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def check_device(name: str) -> torch.device:
    """--device on this machine: 'auto' is CUDA when present, else the CPU; asking for a GPU
    that is not there is an error naming it (not a failure deep inside torch)."""
    import torch

    from vilalign.train.loop import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA device here (use --device cpu or auto)")
        if (device.index or 0) >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here")
    return device


def model_overrides(items: Sequence[str]) -> dict[str, Any]:
    """The ``model.*`` fields of --set, for a preset's model config; any other is an error."""
    overrides = parse_overrides(items)
    other = sorted(set(overrides) - {"model"})
    if other:
        raise ValueError(f"--set {other[0]}: only the preset's model.* fields can be set here")
    model = overrides.get("model", {})
    if not isinstance(model, dict):
        raise ValueError("--set model: set its fields, e.g. --set model.depth=2")
    return model


def load_source(
    args: argparse.Namespace, device: torch.device | None = None, num_labels: int = 0
) -> tuple[nn.Module, Any, str]:
    """(model on ``device`` (default: --device), tokenizer, run name) from --checkpoint (with
    its saved tokenizer) or --preset (with --set model.* applied), or (adapter, processor,
    name) from --hf-model.

    A --preset model gets a fresh task head with ``num_labels`` outputs (0: none).
    """
    from pathlib import Path

    import torch

    from vilalign.config import model_config
    from vilalign.model import (
        build_model,
        load_checkpoint_tokenizer,
        load_pretrained,
        load_tokenizer,
    )

    device = device or check_device(args.device)
    torch.manual_seed(args.seed)
    if getattr(args, "regions", None) and not getattr(args, "hf_model", None):
        raise ValueError("--regions: only --hf-model LXMERT / VisualBERT read region features")
    if getattr(args, "hf_model", None):
        if args.overrides:
            raise ValueError("--set: a published model's config is fixed; --set needs --preset")
        from vilalign.adapters import load_hf_model

        adapter = load_hf_model(args.hf_model, regions=args.regions).to(device)
        return adapter, adapter.processor, Path(args.hf_model).name
    if args.checkpoint is None:
        fields = {"num_labels": num_labels, **model_overrides(args.overrides)}
        cfg = model_config(args.preset, **fields)
        model = build_model(cfg).to(device)
        return model, load_tokenizer(model.config.text), f"{args.preset}-untrained"
    if args.overrides:
        raise ValueError("--set: a --checkpoint's model is fixed; --set model.* needs --preset")
    model = load_pretrained(args.checkpoint).to(device)
    return model, load_checkpoint_tokenizer(args.checkpoint), args.checkpoint.name


def data_config(args: argparse.Namespace, **fields: Any) -> DataConfig:
    """The DataConfig of --dataset/--root (and ``fields``); an error is one line naming the
    option."""
    from pydantic import ValidationError

    from vilalign.data import DataConfig

    cache = {"progress": getattr(args, "progress", True)}
    data = {"name": args.dataset, "root": args.root, "cache": cache, **fields}
    try:
        return DataConfig(**data)
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""  # "": a rule across fields
        option = {"name": "--dataset", "root": "--root"}.get(field, "--dataset/--root")
        message = first["msg"].removeprefix("Value error, ")
        got = f" (got {first['input']!r})" if field else ""
        raise ValueError(f"{option}: {message}{got}") from None


def evaluation_dataset(args: argparse.Namespace, model: nn.Module) -> Any:
    """The dataset named by --dataset/--root/--split with the evaluation transform (for a
    published model: its images as they are, for its own processor)."""
    from vilalign.adapters import Adapter, adapter_dataset
    from vilalign.analysis.pipeline import evaluation_dataset as build

    data = data_config(args)
    if isinstance(model, Adapter):  # raw images: the model's own processor prepares them
        return adapter_dataset(model, data, args.split)
    return build(model, data, args.split)


# ---------------------------------------------------------------------------- analysis folders


def analysis_command(p: argparse.ArgumentParser, name: str, handler: Any) -> None:
    """Register ``handler`` for an analysis command (analyse, attention, explain): its
    output folder is held while it runs (created, and so checked writable, before any
    work), and its tables and figures go to the MLflow run of the --checkpoint when that
    run was tracked, or to a new run with --tracking-uri."""
    p.add_argument(
        "--tracking-uri",
        help="MLflow store for a new run of this analysis (default: the store of the "
        "--checkpoint's run when it was tracked; else nothing is recorded)",
    )
    p.add_argument("--no-tracking", action="store_true", help="record nothing in MLflow")
    p.set_defaults(handler=handler, analysis=name)


def run_handler(args: argparse.Namespace) -> int:
    """Run the command's handler; an analysis command's (see :func:`analysis_command`)
    holding its output folder, then recording its files."""
    name = getattr(args, "analysis", None)
    if name is None:
        return args.handler(args)
    from vilalign.distributed import env_rank
    from vilalign.locks import folder_lock

    if env_rank() != 0:  # (torchrun: rank 0 writes)
        return args.handler(args)
    with folder_lock(args.output_dir, "analysis"):
        code = args.handler(args)
        if code == 0 and not args.no_tracking:
            from vilalign.experiments.tracking import log_analysis

            params = {k: str(v) for k, v in vars(args).items() if k != "handler"}
            log_analysis(args.output_dir, name, params, args.checkpoint, args.tracking_uri)
    return code


def check_sample_count(dataset: Any, n_samples: int | str, split: str, images: bool = True) -> None:
    """--n-samples against the split it reads: more than it holds is an error (not a
    silent cut); with ``images``, samples that all show one image are too (an alignment
    measure would compare identical image representations). ``all`` is the whole split."""
    size = len(dataset)
    if n_samples == "all":
        n_samples = size
    elif n_samples > size:
        raise ValueError(
            f"--n-samples: {n_samples} is more than the {size} samples of the {split} split; "
            f"use at most {size}"
        )
    records = getattr(dataset, "records", None) if images else None
    if records is not None and len({r.image_id for r in records[:n_samples]}) < 2:
        raise ValueError(
            f"--n-samples: the first {n_samples} samples of the {split} split all show one "
            "image, so their image representations are all alike and nothing can be "
            "compared; use more samples"
        )
