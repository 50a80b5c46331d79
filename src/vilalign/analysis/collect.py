"""Collect per-layer representations of both streams in one pass over a dataset.

The states come from a :class:`LayerSource`: for vilalign's own model, forward hooks on
every fusion layer (and, if asked, every encoder layer) catch each layer's output as the
batch passes through (:class:`HookSource`); a published model's adapter
(:mod:`vilalign.adapters`) hands over the states its model returns. Either way each
layer's output is reduced at once to the requested views, so nothing runs twice and only
the reduced views are kept:

- ``cls``: the stream's summary token: its first token (text [CLS], image CLS token)
  unless the source names another position (CLIP's end-of-text token);
- ``mean``: mean over real text tokens (attention mask, [CLS]/[SEP] included) or over
  real image patches (prefix tokens such as the image CLS excluded);
- ``tokens``: every token / patch state, with the text mask (for token-level measures).

Storage is preallocated for the number of samples collected, optionally float16, in
memory while it fits half the memory budget (``analysis.memory_gb``) and in files on
disk beyond that (:mod:`vilalign.analysis.store`; ``spill_dir`` puts every array there),
so any number of samples — ``--n-samples all`` — is collected with bounded memory. A NaN
or inf state is an error naming the layer and the samples as soon as it is collected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vilalign import distributed as dist
from vilalign.analysis.measures import budget
from vilalign.analysis.store import IN_MEMORY_SHARE, NonFiniteRows, Store
from vilalign.config import ENCODER
from vilalign.data.types import Batch
from vilalign.model.checkpoint import unwrap

log = logging.getLogger(__name__)

View = Literal["cls", "mean", "tokens"]
VIEWS: tuple[str, ...] = ("cls", "mean", "tokens")
STREAMS = ("text", "image")


@dataclass(frozen=True)
class LayerInfo:
    """One layer whose states are collected."""

    name: str  # "fusion.3", "text_encoder.1", "image_encoder.0"
    index: int  # position in the stream's stack of collected layers
    kind: str  # a fusion layer's kind, or ENCODER
    streams: tuple[str, ...]  # which streams this layer produces


@dataclass
class Representations:
    """Per layer, per stream, per view: N×D (pooled views) or N×T×D (tokens), each a
    tensor or, when collection spilled it to disk, a :class:`~vilalign.analysis.store.DiskRows`
    (a :class:`~vilalign.analysis.measures.View` reads either block by block).

    Row ``r`` is sample ``ids[r]``, showing image ``image_ids[r]`` (``Batch.image_ids``;
    left empty, every row shows its own image).
    """

    ids: list[str]
    layers: list[LayerInfo]
    views: tuple[str, ...]
    pooled: dict[tuple[str, str, str], torch.Tensor] = field(default_factory=dict)
    tokens: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    text_mask: torch.Tensor | None = None  # (N, T) for the token view
    num_prefix_tokens: int = 1
    image_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.image_ids:
            self.image_ids = list(self.ids)
        if len(self.image_ids) != len(self.ids):
            raise ValueError(f"{len(self.image_ids)} image ids for {len(self.ids)} rows")

    def get(self, layer: str, stream: str, view: str) -> torch.Tensor:
        """N×D for ``cls``/``mean``; N×T×D for ``tokens``. Float32 on the CPU."""
        if view == "tokens":
            key = (layer, stream)
            if key not in self.tokens:
                raise KeyError(f"no token states for {layer}/{stream}: collect with 'tokens'")
            return torch.as_tensor(np.asarray(self.tokens[key])).float()
        key3 = (layer, stream, view)
        if key3 not in self.pooled:
            raise KeyError(f"no {view!r} view for {layer}/{stream}; collected: {self.views}")
        return torch.as_tensor(np.asarray(self.pooled[key3])).float()

    def rows(self, layer: str, stream: str, view: str) -> Any:
        """The stored N×D array of a pooled view as it is (a tensor or ``DiskRows``), for a
        :class:`~vilalign.analysis.measures.View` to read block by block: nothing is
        loaded or converted, so many layers' views cost no memory until measured."""
        key = (layer, stream, view)
        if key not in self.pooled:
            raise KeyError(f"no {view!r} view for {layer}/{stream}; collected: {self.views}")
        return self.pooled[key]

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(f"no layer {name!r}; collected: {[i.name for i in self.layers]}")

    @property
    def fusion_layers(self) -> list[LayerInfo]:
        """The layers that carry both streams, whose alignment the table measures: the
        fusion layers (for two towers that never meet, their depth-paired layers)."""
        return [i for i in self.layers if set(STREAMS) <= set(i.streams)]


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return states.mean(dim=1)
    m = mask.to(states.dtype)[..., None]  # (B, T, 1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class StreamMasks:
    """What collection needs to know of one batch besides the states themselves."""

    text: torch.Tensor  # (B, T), 1 = real token
    image: torch.Tensor | None = None  # (B, prefix + P), 1 = real image token; None: all real
    # stream -> (B,) position the ``cls`` view reads; a stream not named reads position 0
    summary: dict[str, torch.Tensor] = field(default_factory=dict)


#: ``emit(layer, stream, states, masks)``: one layer's (B, L, D) states of one stream.
Emit = Callable[[LayerInfo, str, torch.Tensor, StreamMasks], None]


@runtime_checkable
class LayerSource(Protocol):
    """Where collection takes per-layer states from: one forward pass per batch.

    vilalign's own model is read through forward hooks (:class:`HookSource`); a published
    model's adapter (:mod:`vilalign.adapters`) is itself a source.
    """

    num_prefix_tokens: int  # image tokens before the patches (CLS, registers); 0 for regions

    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]: ...

    def check_views(self, views: Sequence[str]) -> None: ...

    def run_layers(self, batch: Batch, layers: Sequence[LayerInfo], emit: Emit) -> StreamMasks:
        """Run the model once on ``batch``, emit every layer of ``layers``, return the masks."""
        ...


class HookSource:
    """vilalign's own model as a :class:`LayerSource`: forward hooks on its layers emit each
    output as the batch passes through, so no layer's states outlive the next layer."""

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap(model)
        self.num_prefix_tokens = self.model.num_prefix_tokens

    def _modules(self, include_encoders: bool) -> list[tuple[LayerInfo, nn.Module]]:
        m = self.model
        out: list[tuple[LayerInfo, nn.Module]] = []
        if include_encoders:
            for i, layer in enumerate(m.text_encoder.encoder.layer):
                out.append((LayerInfo(f"text_encoder.{i}", i, ENCODER, ("text",)), layer))
            for i, block in enumerate(m.image_encoder.blocks):
                out.append((LayerInfo(f"image_encoder.{i}", i, ENCODER, ("image",)), block))
        for i, layer in enumerate(m.fusion_layers):
            out.append((LayerInfo(f"fusion.{i}", i, layer.kind, STREAMS), layer))
        return out

    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]:
        return [info for info, _ in self._modules(include_encoders)]

    def check_views(self, views: Sequence[str]) -> None:
        """Every view exists: both streams start with a summary token."""

    def _hook(self, info: LayerInfo, emit: Emit, masks: StreamMasks):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if info.kind != ENCODER:
                emit(info, "text", output[0], masks)
                emit(info, "image", output[1], masks)
                return
            states = _first(output)
            if (
                info.name.startswith("image_encoder.")
                and info.index == len(self.model.image_encoder.blocks) - 1
            ):
                # The ViT's last block is followed by its final norm; the fusion layers
                # (and the concat baseline) see the normed states, so record those.
                states = self.model.image_encoder.vit.norm(states)
            emit(info, info.streams[0], states, masks)

        return hook

    def run_layers(self, batch: Batch, layers: Sequence[LayerInfo], emit: Emit) -> StreamMasks:
        masks = StreamMasks(batch.attention_mask)
        wanted = {info.name for info in layers}
        modules = [(i, m) for i, m in self._modules(True) if i.name in wanted]
        handles = [m.register_forward_hook(self._hook(i, emit, masks)) for i, m in modules]
        try:
            self.model(batch.input_ids, batch.attention_mask, batch.pixel_values,
                       batch.token_type_ids)  # fmt: skip
        finally:
            for handle in handles:
                handle.remove()
        return masks


def as_layer_source(model: nn.Module) -> LayerSource:
    """An adapter is its own source; vilalign's model is read through hooks."""
    inner = unwrap(model)
    return inner if isinstance(inner, LayerSource) else HookSource(inner)


def head(batch: Batch, n: int) -> Batch:
    """The first ``n`` samples of ``batch`` (tensor views, no copies): every tensor and list
    field is per sample, ``extras`` included."""
    if n >= len(batch):
        return batch

    def cut(value: Any) -> Any:
        if (isinstance(value, torch.Tensor) and value.ndim > 0) or isinstance(value, list):
            return value[:n]
        return value

    moved = {f.name: cut(getattr(batch, f.name)) for f in fields(batch) if f.name != "extras"}
    return Batch(**moved, extras={k: cut(v) for k, v in batch.extras.items()})


class Collector:
    """Reduces each layer's states to views as a source hands them over."""

    def __init__(
        self,
        model: nn.Module,
        views: Sequence[str],
        include_encoders: bool,
        store: Store,
    ) -> None:
        self.source = as_layer_source(model)
        self.source.check_views(views)
        self.views = tuple(views)
        self.store = store
        self.layers = self.source.layer_infos(include_encoders)
        self.prefix = self.source.num_prefix_tokens
        self.start = 0

    def run(self, batch: Batch, start: int) -> torch.Tensor:
        """Collect one batch into rows ``start...``; returns its text mask."""
        self.start = start
        return self.source.run_layers(batch, self.layers, self._record).text

    def _record(
        self, info: LayerInfo, stream: str, states: torch.Tensor, masks: StreamMasks
    ) -> None:
        mask = masks.text if stream == "text" else None
        if stream == "image":
            patches = states[:, self.prefix :]
            if masks.image is not None:
                mask = masks.image[:, self.prefix :]
        for view in self.views:
            if view == "cls":
                where = masks.summary.get(stream)
                value = states[:, 0] if where is None else states[torch.arange(len(states)), where]
            elif view == "mean":
                value = _mean(states, mask) if stream == "text" else _mean(patches, mask)
            else:
                if stream == "image" and mask is not None and not bool(mask.all()):
                    raise ValueError(
                        f"token view: {info.name} has padded image tokens (images of "
                        "different sizes, or different numbers of regions, in one batch); "
                        "collect the pooled views (cls, mean) instead"
                    )
                # Padded positions are stored as zeros: masked anyway, and deterministic.
                value = states if stream == "text" else patches
                if mask is not None:
                    value = value * mask[..., None].to(states.dtype)
                self.store.write((info.name, stream, "tokens"), self.start, value)
                continue
            self.store.write((info.name, stream, view), self.start, value)


@torch.no_grad()
def collect(
    model: nn.Module,
    batches: Iterable[Batch],
    num_samples: int,
    views: Sequence[str] = ("cls", "mean"),
    include_encoders: bool = False,
    dtype: torch.dtype = torch.float32,
    spill_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Representations:
    """Run ``model`` over ``batches`` once (eval mode, no grad) and gather views per layer.

    Collects the first ``num_samples`` samples (fewer if the batches run out). Sample
    ids are kept in order. Arrays beyond half the memory budget (``measures.settings``)
    go to files in a temporary folder; ``spill_dir`` puts every array in files there.
    """
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise ValueError(f"views: unknown {bad} (allowed: {', '.join(VIEWS)})")
    if num_samples < 2:
        raise ValueError(f"num_samples: need at least 2 samples to compare, got {num_samples}")
    spill = Path(spill_dir) if spill_dir is not None else None
    if spill is not None:
        spill.mkdir(parents=True, exist_ok=True)
    store = Store(num_samples, dtype, spill, IN_MEMORY_SHARE * budget.budget_bytes())
    was_training = model.training
    model.eval()
    device = device or next(unwrap(model).parameters()).device
    ids: list[str] = []
    image_ids: list[str] = []
    text_masks: list[torch.Tensor] = []
    collector = Collector(model, views, include_encoders, store)
    bar = tqdm(total=num_samples, desc="collecting", unit="sample", disable=not progress)
    for batch in batches:
        take = min(len(batch), num_samples - len(ids))
        if take <= 0:
            break
        try:
            text_mask = collector.run(head(batch.to(device), take), len(ids))
        except NonFiniteRows as err:
            raise _non_finite(err, batch.ids[:take], len(ids)) from None
        ids.extend(str(i) for i in batch.ids[:take])
        image_ids.extend(str(i) for i in batch.image_ids[:take])
        text_masks.append(text_mask.cpu())
        bar.update(take)
        if len(ids) >= num_samples:  # before the loader reads (and collates) one more batch
            break
    bar.close()
    model.train(was_training)
    if len(ids) < num_samples:
        log.warning("collected %d samples, fewer than the %d asked for", len(ids), num_samples)
    return _finish(store, ids, image_ids, collector, views, text_masks)


def _non_finite(err: NonFiniteRows, batch_ids: Sequence[Any], start: int) -> ValueError:
    """The error of a NaN/inf state: which layer, stream and view, and which samples."""
    samples = [str(batch_ids[row - start]) for row in err.rows]
    layer, stream, view = err.key
    return ValueError(
        f"collected {view} states of {layer} ({stream} stream) contain NaN or inf for "
        f"{len(samples)} of {len(batch_ids)} samples in a batch (ids: {samples[:5]}); "
        "the model's outputs are not finite (e.g. float16 overflow or diverged training)"
    )


def _finish(
    store: Store,
    ids: list[str],
    image_ids: list[str],
    collector: Collector,
    views: Sequence[str],
    text_masks: list[torch.Tensor],
) -> Representations:
    n = len(ids)
    reps = Representations(
        ids=ids,
        layers=list(collector.layers),
        views=tuple(views),
        num_prefix_tokens=collector.prefix,
        image_ids=image_ids,
    )
    for key, array in store.finish(n).items():
        if key[2] == "tokens":
            reps.tokens[(key[0], key[1])] = array
        else:
            reps.pooled[key] = array
    if "tokens" in views and text_masks:
        width = text_masks[0].shape[1]
        reps.text_mask = torch.cat(
            [torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in text_masks]
        )
    return reps


def gather_representations(reps: Representations, total: int) -> Representations:
    """Per-rank representations → the whole set's (a no-op in a single process).

    Each rank collected its :class:`~vilalign.distributed.RankShard` positions of the
    first ``total`` samples; every view (pooled N×D, token N×T×D, the text mask), the
    ids and the image ids come back in sampler order on every rank, so the alignment
    measures see the same N samples as one process.
    """
    if not dist.is_distributed():
        return reps
    per_rank = dist.all_gather_object(list(zip(reps.ids, reps.image_ids, strict=True)))
    rows = [r[j] for j in range(len(per_rank[0])) for r in per_rank][:total]
    return replace(
        reps,
        ids=[sample for sample, _ in rows],
        image_ids=[image for _, image in rows],
        pooled={k: dist.gather_in_order(_tensor(v), total) for k, v in reps.pooled.items()},
        tokens={k: dist.gather_in_order(_tensor(v), total) for k, v in reps.tokens.items()},
        text_mask=None if reps.text_mask is None else dist.gather_in_order(reps.text_mask, total),
    )


def _tensor(values: Any) -> torch.Tensor:
    """An in-memory tensor of stored values (read from disk when they were spilled)."""
    if isinstance(values, torch.Tensor):
        return values.contiguous()
    return torch.as_tensor(np.asarray(values))
