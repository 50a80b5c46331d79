"""The adapter interface: a published Hugging Face vision-language model in vilalign's terms.

An :class:`Adapter` wraps one ``transformers`` model and its processor and answers what
collection and attention analysis ask of vilalign's own model:

- which layers carry which streams, and of what kind (:meth:`Adapter.layer_infos`);
- the per-layer text and image states of a batch, with the masks and summary positions
  the views need (:meth:`Adapter.run_layers`: an adapter *is* a
  :class:`~vilalign.analysis.collect.LayerSource`);
- the attention weights of its fusion layers, per direction (:meth:`Adapter.attention_maps`),
  in the ``{direction: (B, H, Q, K)}`` form :mod:`vilalign.analysis.attention` reads;
- how a list of samples becomes the model's inputs, with the model's own processor
  (:meth:`Adapter.collator`).

So collection, every measure, the statistics, attention entropy and the report run
unchanged. An adapter is an ``nn.Module`` holding the model, so ``eval()``, ``.to()`` and
``parameters()`` work as they do on vilalign's model.

Adapters register by the ``model_type`` of the configs they read (:func:`register_adapter`);
:func:`adapter_class` finds one for a config and :func:`adapt` wraps a loaded model.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vilalign.analysis.collect import Emit, LayerInfo, StreamMasks
from vilalign.config import COATTENTION, ENCODER, SINGLE_STREAM, ConfigError
from vilalign.data.types import Batch, Sample

Tensor = torch.Tensor
States = dict[tuple[str, str], Tensor]  # (layer name, stream) -> (B, L, D)

# Layer kinds are vilalign's own (vilalign.config), so published and own layers share a
# vocabulary in every table (the two-stream cross layers are co-attention layers).
__all__ = ["COATTENTION", "ENCODER", "SINGLE_STREAM"]  # (re-exported for the adapter modules)
STREAMS = ("text", "image")

#: Texts are cut to the model's own limit or this many tokens, whichever is smaller:
#: captions and questions are far shorter, and it bounds the token view's storage.
MAX_TEXT_TOKENS = 64


class AdapterError(ConfigError):
    """A published model cannot be read as asked; the message names the model or file."""


class UnsupportedModelError(AdapterError):
    """No adapter reads this model class."""


class ModelNotAvailableError(AdapterError):
    """The name is neither a saved model folder nor a model the hub (or its cache) has."""


class ProcessorMismatchError(AdapterError):
    """The processor (tokenizer, image processor) was not made for this model."""


class ImageSizeError(AdapterError):
    """Images of a size the model cannot take."""


@dataclass
class AttentionMaps:
    """One batch's attention weights per fusion layer, as ``analysis.attention`` reads them.

    ``layers[i]`` maps a direction name (``analysis.attention.DIRECTIONS``, or ``joint``
    for a single-stream layer's one attention over text then image tokens) to (B, H, Q, K)
    weights; ``is_coattention[i]`` says whether layer ``i`` lets one stream attend to the
    other. ``text_mask`` (B, T) marks the text positions the model treats as real keys;
    ``image_mask`` (B, I) the real image tokens (None: all), padding always at the end.
    """

    layers: list[dict[str, Tensor]]
    is_coattention: list[bool]
    text_mask: Tensor
    image_mask: Tensor | None = None


class Adapter(nn.Module, metaclass=ABCMeta):
    """One published model (and its processor) seen as vilalign sees its own.

    Subclasses declare the configs they read (``model_types``), the ``transformers`` base
    class (``model_class``), the processor classes made for it (``processor_classes``;
    empty: a bare tokenizer, the region-feature models), the streams without a summary
    token for the ``cls`` view (``no_summary``), and implement the four abstract methods.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    model_class: ClassVar[str] = ""
    processor_classes: ClassVar[tuple[str, ...]] = ()
    #: stream -> why it has no summary token (its ``cls`` view does not exist)
    no_summary: ClassVar[dict[str, str]] = {}
    #: how the model is built, for errors and documentation
    family: ClassVar[str] = ""
    #: whether the constructor takes ``regions=`` (a region-feature file instead of pixels)
    reads_regions: ClassVar[bool] = False
    num_prefix_tokens: int = 1

    def __init__(self, model: nn.Module, processor: Any, name: str | None = None) -> None:
        super().__init__()
        base = getattr(model, "base_model", model)  # a task model's body (…ForQuestionAnswering)
        if type(base).__name__ != self.model_class:
            raise UnsupportedModelError(
                f"{type(self).__name__} reads {self.model_class}, not {type(model).__name__}"
            )
        self.model = base
        self.processor = processor
        self.name = str(name or getattr(base, "name_or_path", "") or self.model_class)
        self.check_processor()
        self.eval()  # analysis reads models as they are: no dropout

    # ------------------------------------------------------------------ what an adapter says

    @abstractmethod
    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]:
        """The layers collection reads, in depth order (``fusion.*`` carry both streams)."""

    @abstractmethod
    def model_inputs(self, batch: Batch) -> dict[str, Any]:
        """The keyword arguments of the model's own forward for ``batch``."""

    @abstractmethod
    def layer_states(self, batch: Batch) -> tuple[States, StreamMasks]:
        """One forward pass: every layer's states per stream, and the batch's masks."""

    @abstractmethod
    def attention_maps(self, batch: Batch) -> AttentionMaps:
        """One forward pass with attention weights of every fusion layer, per direction."""

    @classmethod
    def load_processor(cls, name: str) -> Any:
        """The processor saved with model ``name`` (hub name or folder)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name)

    def collator(self, max_length: int, padding: str = "longest") -> Callable[[list], Batch]:
        """``list[Sample]`` → :class:`Batch` with the model's own processor."""
        from vilalign.adapters.data import ProcessorCollator

        return ProcessorCollator(self.processor, max_length, padding)

    def image_transform(self) -> Callable[[Any], Tensor]:
        """The dataset transform: the raw decoded image (the processor does the rest)."""
        from vilalign.adapters.data import RawImage

        return RawImage()

    def expected_image_size(self) -> tuple[int, int] | None:
        """(H, W) the model takes, or None when it takes any size."""
        return None

    def options(self) -> dict[str, Any]:
        """Constructor arguments beyond model, processor and name (kept by :meth:`at_init`)."""
        return {}

    # ------------------------------------------------------------------ shared behaviour

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def text_config(self) -> Any:
        return getattr(self.model.config, "text_config", self.model.config)

    @property
    def max_text_length(self) -> int:
        """Tokens per text: the model's position limit or :data:`MAX_TEXT_TOKENS`."""
        return min(int(self.text_config.max_position_embeddings), MAX_TEXT_TOKENS)

    @property
    def default_views(self) -> tuple[str, ...]:
        return ("mean",) if self.no_summary else ("cls", "mean")

    def describe(self) -> str:
        return f"{self.name} ({type(self.model).__name__})"

    def check_views(self, views: Sequence[str]) -> None:
        if "cls" not in views or not self.no_summary:
            return
        stream, why = next(iter(self.no_summary.items()))
        raise AdapterError(
            f"views: {self.describe()} has no {stream} summary token for the 'cls' view "
            f"({why}); use the mean view (--views mean)"
        )

    def run_layers(self, batch: Batch, layers: Sequence[LayerInfo], emit: Emit) -> StreamMasks:
        """The :class:`~vilalign.analysis.collect.LayerSource` call: one forward, then emit."""
        states, masks = self.layer_states(batch)
        for info in layers:
            for stream in info.streams:
                emit(info, stream, states[(info.name, stream)], masks)
        return masks

    def forward(self, batch: Batch, **kwargs: Any) -> Any:
        """The model's own forward pass on ``batch`` (what the benchmark compares against)."""
        self.check_images(batch)
        return self.model(**self.model_inputs(batch), **kwargs)

    def encode(self, samples: Sequence[Sample]) -> Batch:
        """One batch from samples, with this adapter's collator (tests, small scripts)."""
        return self.collator(self.max_text_length)(list(samples))

    def at_init(self, seed: int = 0) -> Adapter:
        """The same architecture and processor with freshly initialised weights: the
        at-initialisation reference (what alignment looks like before any training)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = type(self.model)(self.model.config)
        device = next(self.model.parameters()).device
        return type(self)(
            fresh.to(device), self.processor, name=f"{self.name}@init{seed}", **self.options()
        )

    def check_images(self, batch: Batch) -> None:
        expected = self.expected_image_size()
        got = tuple(batch.pixel_values.shape[-2:])
        if expected is not None and got != expected:
            raise ImageSizeError(
                f"{self.describe()} takes {expected[0]}×{expected[1]} images (its vision "
                f"config's image_size), got {got[0]}×{got[1]}: prepare images with the "
                "model's own processor (AutoProcessor.from_pretrained of the same name)"
            )

    def check_processor(self) -> None:
        """Fail now, naming both, when the processor was made for another model."""
        kind = type(self.processor).__name__
        if self.processor_classes and kind not in self.processor_classes:
            raise ProcessorMismatchError(
                f"processor {kind} does not match {self.describe()}: it takes "
                f"{' or '.join(self.processor_classes)} (load the processor saved with "
                "the model)"
            )
        vocab, size = len(self.tokenizer), int(self.text_config.vocab_size)
        if vocab > size:
            raise ProcessorMismatchError(
                f"tokenizer {type(self.tokenizer).__name__} has {vocab} tokens but "
                f"{self.describe()} embeds {size}: it was made for another model"
            )
        self._check_processed_size()

    def _check_processed_size(self) -> None:
        expected = self.expected_image_size()
        image_processor = getattr(self.processor, "image_processor", None)
        if expected is None or image_processor is None:
            return
        probe = torch.zeros(3, 2 * expected[0], 3 * expected[1], dtype=torch.uint8)
        got = tuple(image_processor(probe, return_tensors="pt")["pixel_values"].shape[-2:])
        if got != expected:
            raise ProcessorMismatchError(
                f"image processor {type(image_processor).__name__} makes {got[0]}×{got[1]} "
                f"images but {self.describe()} takes {expected[0]}×{expected[1]}: it was "
                "made for another model"
            )


# ---------------------------------------------------------------------------- helpers


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with the explicit (eager) attention, the only one that returns weights;
    restores the implementation it had (SDPA computes the same function, faster)."""
    before = model.config._attn_implementation
    if before != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if before != "eager":
            model.set_attn_implementation(before)


@contextmanager
def captured_weights(
    modules: Sequence[nn.Module], force: str | None = None
) -> Iterator[list[list[Tensor]]]:
    """Keep the attention weights (``output[1]``) each module returns, one list per module
    with one entry per call. ``force`` names a keyword the module must get as True to
    return them at all (LXMERT's inner ``output_attentions``, which its layers hard-code
    to False for some directions): a pre-hook sets it, the module's own code does the rest.
    """
    calls: list[list[Tensor]] = [[] for _ in modules]
    handles = []

    def keep(i: int):
        return lambda _m, _inputs, output: calls[i].append(output[1])

    def on(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, force: True}

    for i, module in enumerate(modules):
        if force is not None:
            handles.append(module.register_forward_pre_hook(on, with_kwargs=True))
        handles.append(module.register_forward_hook(keep(i)))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def stacked_layers(
    fusion: int, kind: str, text_layers: int = 0, image_layers: int = 0
) -> list[LayerInfo]:
    """The layers of a model whose streams meet in ``fusion`` layers of ``kind``, in depth
    order: ``text_layers`` / ``image_layers`` unimodal encoder layers first (pass 0 to leave
    them out), then ``fusion.k``."""
    out = [LayerInfo(f"text_encoder.{i}", i, ENCODER, ("text",)) for i in range(text_layers)]
    out += [LayerInfo(f"image_encoder.{j}", j, ENCODER, ("image",)) for j in range(image_layers)]
    return out + [LayerInfo(f"fusion.{k}", k, kind, STREAMS) for k in range(fusion)]


class CrossModalLayers:
    """``layer_infos`` of a two-stream model whose streams meet in co-attention layers:
    the unimodal encoder layers, then ``fusion.k``; the adapter gives ``_depths()``
    (text encoder, image encoder, cross-modal layers)."""

    def _depths(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def layer_infos(self, include_encoders: bool) -> list[LayerInfo]:
        text, image, fusion = self._depths()
        if not include_encoders:
            text = image = 0
        return stacked_layers(fusion, COATTENTION, text, image)


def depth_pairs(n_text: int, n_image: int) -> list[tuple[int, int]]:
    """Text and image layer indices at the same relative depth, one pair per layer of the
    shallower stack: equal depths pair layer k with layer k; 12 text and 24 image layers
    pair text k with image 2k + 1 (both stacks' last layers always meet)."""
    n = min(n_text, n_image)
    return [
        (math.ceil((k + 1) * n_text / n) - 1, math.ceil((k + 1) * n_image / n) - 1)
        for k in range(n)
    ]


# ---------------------------------------------------------------------------- registry

_ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make ``cls`` the adapter of every ``model_type`` it declares."""
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


def supported_models() -> dict[str, str]:
    """``config.model_type`` → the ``transformers`` class its adapter reads."""
    return {t: cls.model_class for t, cls in sorted(_ADAPTERS.items())}


def adapter_class(config: Any, name: str = "") -> type[Adapter]:
    """The adapter for a model config (by its ``model_type``), or a clear refusal."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        known = ", ".join(f"{cls} ({t})" for t, cls in supported_models().items())
        what = f"{name} ({model_type})" if name else repr(model_type)
        raise UnsupportedModelError(
            f"no adapter reads {what}; supported: {known}. Adding one is one module: "
            "see docs/adapters.md"
        )
    return _ADAPTERS[model_type]


def adapt(model: nn.Module, processor: Any, name: str | None = None, **options: Any) -> Adapter:
    """Wrap an already loaded ``transformers`` model and its processor in its adapter."""
    cls = adapter_class(model.config, name or type(model).__name__)
    return cls(model, processor, name=name, **options)
