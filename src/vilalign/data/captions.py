"""Image–caption pretraining data: Conceptual Captions at scale, and small caption folders.

* :func:`download_conceptual_captions` — the published TSV (``caption<TAB>url``, no header)
  → img2dataset (parallel, resized, resumable; dead links and non-images recorded, not
  fatal) → WebDataset shards ``<out>/{00000..}.tar`` with ``<key>.jpg``, ``<key>.txt``.
* :class:`CaptionShards` — streams those shards as :class:`Sample` s: shards shuffled per
  epoch and split across DDP ranks and DataLoader workers, samples shuffled in a buffer.
  Shards are local paths or any fsspec URL (``s3://``, ``gs://``, ``https://``, ...),
  read as a stream: one sample at a time, never a whole shard or dataset in memory.
* :class:`CaptionFolder` — a folder of ``<name>.<jpg|png|...>`` + ``<name>.txt`` pairs (the
  layout img2dataset's ``files`` output also has), as a map-style dataset with the cache.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vilalign.data.base import ImageTextDataset, Record
from vilalign.data.config import CacheConfig, DataConfig
from vilalign.data.images import (
    BadImageError,
    BadImageLog,
    DataFormatError,
    OnBadImage,
    decode_image,
    handle_bad_image,
)
from vilalign.data.records import BadRecords, OnBadRecord
from vilalign.data.registry import register_dataset
from vilalign.data.transforms import ImageTransform
from vilalign.data.types import DatasetInfo, Sample

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")

# ---------------------------------------------------------------------- downloader


@dataclass
class DownloadReport:
    """What a download produced: shards, and per-outcome counts summed over all shards."""

    shards: list[Path]
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return self.failed_to_download + self.failed_to_resize

    def summary(self) -> str:
        return (
            f"{self.successes} images in {len(self.shards)} shards; {self.failed_to_download} "
            f"failed to download, {self.failed_to_resize} failed to decode/resize "
            f"({self.reasons})"
        )


def _tsv_to_parquet(tsv: Path, out: Path) -> tuple[Path, int, str]:
    """Check every line of the header-less CC TSV and copy it to parquet for img2dataset.

    Parquet, not TSV: img2dataset reads TSV with quoting on, so a caption starting with a
    double quote would be mangled. Returns the copy, its row count and a hash of the rows
    (to recognise a resume).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = out / "_input" / "captions.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("caption", pa.string()), ("url", pa.string())])
    digest, rows = hashlib.sha256(), 0
    chunk: dict[str, list[str]] = {"caption": [], "url": []}
    with tsv.open(encoding="utf-8") as src, pq.ParquetWriter(target, schema) as writer:
        for lineno, line in enumerate(src, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 2 or not parts[1].strip():
                raise DataFormatError(f"{tsv}:{lineno}: expected 'caption<TAB>url'")
            chunk["caption"].append(parts[0])
            chunk["url"].append(parts[1].strip())
            digest.update(line.encode())
            rows += 1
            if len(chunk["url"]) >= 100_000:  # bounded memory for millions of rows
                writer.write_table(pa.table(chunk, schema=schema))
                chunk = {"caption": [], "url": []}
        writer.write_table(pa.table(chunk, schema=schema))
    return target, rows, digest.hexdigest()


def _check_manifest(out: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``out`` already holds every shard of this exact download.

    Shards made from another list or with other settings would be silently mixed in by
    img2dataset's resume, so that is an error naming the difference.
    """
    path = out / "_input" / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in manifest if old.get(k) != manifest[k])
        if diff:
            raise DataFormatError(
                f"{out}: holds shards of another download (differs in "
                f"{', '.join(diff)}); use a new output folder"
            )
    path.write_text(json.dumps(manifest))
    shards = -(-manifest["rows"] // manifest["samples_per_shard"])  # ceil
    return all((out / f"{i:05d}_stats.json").is_file() for i in range(shards))


def read_download_report(out: str | Path) -> DownloadReport:
    """Sum img2dataset's ``<shard>_stats.json`` files in ``out``."""
    out = Path(out)
    report = DownloadReport(shards=sorted(out.glob("[0-9]*.tar")))
    for stats_file in sorted(out.glob("[0-9]*_stats.json")):
        stats = json.loads(stats_file.read_text())
        report.successes += stats["successes"]
        report.failed_to_download += stats["failed_to_download"]
        report.failed_to_resize += stats["failed_to_resize"]
        for reason, n in stats.get("status_dict", {}).items():
            if reason != "success":
                report.reasons[reason] = report.reasons.get(reason, 0) + n
    return report


def download_conceptual_captions(
    tsv: str | Path,
    out: str | Path,
    image_size: int = 224,
    processes: int = 1,
    threads: int = 16,
    samples_per_shard: int = 10_000,
    timeout: int = 10,
    retries: int = 0,
    resize_mode: str = "center_crop",
) -> DownloadReport:
    """Download the images of a Conceptual Captions TSV into WebDataset shards under ``out``.

    Resumable: shards already finished (their ``_stats.json`` exists) are not fetched again
    (img2dataset's incremental mode). Dead links, non-images and undecodable images are
    counted in the report and logged, never fatal. Call it under ``if __name__ ==
    "__main__":`` in scripts: img2dataset starts its worker processes with ``spawn``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    url_list, rows, digest = _tsv_to_parquet(Path(tsv), out)
    manifest = {
        "input_sha256": digest,
        "rows": rows,
        "image_size": image_size,
        "samples_per_shard": samples_per_shard,
        "resize_mode": resize_mode,
    }
    if _check_manifest(out, manifest):
        # every shard is done: skip img2dataset's process start-up (seconds) entirely
        logger.info("conceptual captions: %s is complete, nothing to fetch", out)
        return read_download_report(out)
    from img2dataset import download

    # albumentations (imported by img2dataset in every worker) otherwise polls the internet
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    download(
        url_list=str(url_list),
        output_folder=str(out),
        output_format="webdataset",
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        image_size=image_size,
        resize_mode=resize_mode,
        processes_count=processes,
        thread_count=threads,
        number_sample_per_shard=samples_per_shard,
        timeout=timeout,
        retries=retries,
        incremental_mode="incremental",
        enable_wandb=False,
        distributor="multiprocessing",
    )
    report = read_download_report(out)
    logger.info("conceptual captions: %s", report.summary())
    return report


# ---------------------------------------------------------------------- shard reader


def _is_remote(url: str) -> bool:
    """An fsspec URL (``s3://...``), as opposed to a local path or a webdataset ``pipe:``."""
    return "://" in url and not url.startswith(("file://", "pipe:"))


def _glob(url: str) -> list[str]:
    if not _is_remote(url):
        return sorted(glob.glob(url.removeprefix("file://")))
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    scheme = url.split("://", 1)[0]
    # in the form the user wrote (``memory://x``, not ``memory:///x``)
    marker = fs.root_marker
    return sorted(f"{scheme}://{p.removeprefix(marker) if marker else p}" for p in fs.glob(path))


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Brace patterns (``cc/{00000..00099}.tar``), globs or lists → the shard list.

    Globs work on local paths and on fsspec URLs (``s3://bucket/cc/*.tar``).
    """
    from webdataset.shardlists import expand_urls

    items = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for item in items:
        for url in expand_urls(item):
            out.extend(_glob(url) if glob.has_magic(url) else [url])
    return out


def open_shard(url: str) -> Any:
    """A binary stream of one shard: fsspec for URLs, webdataset's opener for the rest.

    (webdataset's own opener handles local files and ``pipe:`` commands, and remote
    schemes only through command-line tools; fsspec covers every file system it knows.)
    """
    if _is_remote(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    from webdataset.gopen import gopen

    return gopen(url.removeprefix("file://"), "rb")


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _buffer_shuffle(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Approximate shuffle with a buffer of ``size`` items (streams never fit in memory)."""
    if size <= 1:  # no buffer: the stream order (shards are still shuffled per epoch)
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(len(buf))
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


@register_dataset
class CaptionShards(IterableDataset):
    """WebDataset shards of (image, caption) → :class:`Sample` stream (label None).

    Each epoch the shard list is shuffled with ``seed + epoch`` (the same order on every
    rank), then rank ``r`` of ``W`` takes shards ``r::W`` and DataLoader worker ``w`` of
    ``N`` takes every N-th of those, so every shard is read exactly once per epoch. Call
    :meth:`set_epoch` each epoch, as with ``DistributedSampler`` (before the DataLoader
    starts its workers: ``persistent_workers`` keep the epoch they were started with).
    Ranks may hold unequal numbers of samples; DDP needs equal step counts, so give
    ``epoch_length`` (samples per rank per epoch): the stream then cycles through its
    shards and stops at that length.

    ``rank``/``world_size`` default to ``torch.distributed``'s. Bad images follow
    ``on_bad_image``; skips are counted in ``bad_images`` of the process that read them
    and logged by it at the end of each pass.
    """

    info = DatasetInfo(name="captions_shards", splits=("train",), streaming=True)

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: ImageTransform,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        on_bad_image: OnBadImage = "error",
        epoch_length: int | None = None,
    ) -> None:
        self.shards = expand_shards(urls)
        if not self.shards:
            raise DataFormatError(f"no shards match {urls!r}")
        self.transform = transform
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.on_bad_image = on_bad_image
        self.epoch_length = epoch_length
        self.epoch = 0
        self.bad_images = BadImageLog()

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> CaptionShards:
        # streaming: no cache (img2dataset already resized the images), no limit
        return cls(
            cfg.root,  # type: ignore[arg-type]  (info.needs_root: the config has one)
            transform,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed,
            on_bad_image=cfg.on_bad_image,
            epoch_length=cfg.epoch_length,
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shards_for(self, rank: int, world_size: int, worker: int, num_workers: int) -> list[str]:
        """The shards one (rank, worker) reads this epoch."""
        order = list(self.shards)
        random.Random(self.seed + self.epoch).shuffle(order)
        return order[rank::world_size][worker::num_workers]

    def _where(self) -> tuple[int, int, int, int]:
        rank, world = _dist_rank_world()
        rank = self.rank if self.rank is not None else rank
        world = self.world_size if self.world_size is not None else world
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world, worker, workers

    def __iter__(self) -> Iterator[Sample]:
        rank, world, worker, workers = self._where()
        shards = self.shards_for(rank, world, worker, workers)
        if not shards:
            logger.warning(
                "caption shards: rank %d worker %d gets none of the %d shards (%d ranks x %d "
                "workers); use more shards or fewer workers",
                rank,
                worker,
                len(self.shards),
                world,
                workers,
            )
        rng = random.Random(hash((self.seed, self.epoch, rank, worker)))
        if self.epoch_length is None:
            stream = self._samples(shards)
        else:
            quota = self.epoch_length // workers + (worker < self.epoch_length % workers)
            stream = itertools.islice(self._samples_forever(shards), quota)
        yield from _buffer_shuffle(stream, self.shuffle_buffer, rng)
        self.bad_images.report(f"caption shards (rank {rank}, worker {worker})")

    def _samples_forever(self, shards: list[str]) -> Iterator[Sample]:
        if not shards:
            return
        while True:
            yield from self._samples(shards)

    def _samples(self, shards: list[str]) -> Iterator[Sample]:
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for url in shards:
            # tar in streaming mode: memory holds one member at a time, whatever the shard size
            with open_shard(url) as stream:
                for raw in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                    sample = self._to_sample(raw)
                    if sample is not None:
                        yield sample

    def _to_sample(self, raw: dict[str, Any]) -> Sample | None:
        where = f"{raw.get('__url__')}:{raw['__key__']}"
        if "txt" not in raw:
            raise DataFormatError(f"{where}: sample has no .txt caption")
        data = next((raw[k] for k in _IMAGE_KEYS if k in raw), b"")
        try:
            image = self.transform(decode_image(data, where))
        except BadImageError as err:
            handle_bad_image(err, self.on_bad_image, self.bad_images)
            return None
        text = raw["txt"].decode("utf-8").strip()
        key = str(raw["__key__"])  # one caption per image in a shard: the key names both
        return Sample(image=image, text=text, label=None, id=key, image_id=key)


# ---------------------------------------------------------------------- folder reader


def folder_records(root: str | Path) -> list[Record]:
    """Every image under ``root`` with a same-named ``.txt`` beside it; id = relative stem."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: caption folder not found")
    records = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption = path.with_suffix(".txt")
        if caption.is_file():
            key = path.relative_to(root).with_suffix("").as_posix()
            text = caption.read_text(encoding="utf-8").strip()
            records.append(Record(id=key, image=str(path), image_id=key, text=text))
    if not records:
        raise DataFormatError(f"{root}: no image with a same-named .txt caption")
    return records


@register_dataset
class CaptionFolder(ImageTextDataset):
    """A folder of image + ``.txt`` caption pairs (label None), cached like any dataset."""

    info = DatasetInfo(name="captions_folder", splits=("train",))

    def __init__(
        self,
        root: str | Path,
        transform: ImageTransform,
        on_bad_image: OnBadImage = "error",
        cache: CacheConfig | None = None,
        limit: int | None = None,
        on_bad_record: OnBadRecord = "error",
    ) -> None:
        super().__init__(
            f"captions-{Path(root).name}",
            folder_records(root),
            transform,
            on_bad_image,
            cache,
            limit,
            BadRecords(on_bad_record),
        )

    @classmethod
    def from_config(cls, cfg: DataConfig, split: str, transform: ImageTransform) -> CaptionFolder:
        return cls(cfg.root, transform, **cfg.reader_options())  # type: ignore[arg-type]
