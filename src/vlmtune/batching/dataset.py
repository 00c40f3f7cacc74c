"""Training data: read, validate, render-check and hold samples for the engines.

A pre-pass renders every sample once to drop, and count, those that are too long or fail
to render, so a bad row is reported before the first step instead of crashing step 5,000.
It streams: what it keeps of a row is its length, whatever the dataset's size. Only while
the kept rows add up to at most :data:`MAX_KEPT_TOKENS` does it also keep each render's text
part (token ids, labels, masks), so an access only decodes the images and runs the image
processor; the chat template and the tokenizer, about two thirds of a render for a short
sample with a small image, then run once per sample. A larger dataset renders in full at
each access instead (a few milliseconds a sample, against a training step of seconds),
rather than holding every row's tokens. Whether the family's image processor alone gives
the same tensors as its full processor is checked on the first sample; where it does not,
every access renders in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import track

from vlmtune.batching.render import IGNORE, RenderError, TooLong, render
from vlmtune.config import DataConfig
from vlmtune.data.mixture import describe, read_mixture
from vlmtune.data.readers import DataError, read_samples
from vlmtune.data.report import BadRows
from vlmtune.data.sample import BadSample, Sample
from vlmtune.models.families import Family


PARALLEL_MIN_ROWS = 5000
"""Below this many rows the pre-pass stays serial whatever ``data.num_proc`` says: spawned
workers import torch and transformers first (~10 s on 2 cores). Measured on the demo's
clarify rows, serial vs 2 processes: 3,000 rows 16 vs 20 s, 6,000 rows 34 vs 29 s,
12,000 rows 72 vs 44 s."""

MAX_KEPT_TOKENS = 2_000_000
"""Above this many tokens in a dataset no text part is kept: at 32 bytes a token (ids, mask,
labels, image-token types, int64) the kept text stays under ~64 MB: 10,000 rows of 200
tokens are kept, 100,000 are not."""


@dataclass
class RenderedDataset:
    """Samples that render within ``max_length``; ``__getitem__`` renders on access, from
    the kept text part when ``text_parts`` holds one (see the module docstring)."""

    samples: list[Sample]
    processor: Any
    family: Family
    max_length: int
    loss_on: str = "all_assistant"
    system_prompt: str | None = None
    lengths: list[int] = field(default_factory=list)
    text_parts: list[dict[str, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.text_parts is None:
            return self.render(i)
        return {**self.text_parts[i], **_image_part(self.samples[i], self.processor)}

    def render(self, i: int) -> dict[str, torch.Tensor]:
        """The full render of sample ``i`` (template, tokenizer and image processor)."""
        return render(self.samples[i], self.processor, family=self.family, max_length=self.max_length,
                      loss_on=self.loss_on, system_prompt=self.system_prompt)


def _image_part(sample: Sample, processor: Any) -> dict[str, torch.Tensor]:
    images = sample.load_images()
    if not images:
        return {}
    return dict(processor.image_processor(images=images, return_tensors="pt"))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if set(a) != set(b):
        return False
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def _location(sample: Sample, index: int, file: str) -> tuple[str, int]:
    source = getattr(sample, "source", None)
    return source if source else (file, index)


def _check(sample: Sample, processor: Any, family: Family, data: DataConfig, max_length: int,
           image_keys: set[str] | None) -> tuple[str, Any, Any]:
    """Render one sample: ``("ok", enc, image_keys)`` or ``(reason, detail, image_keys)``
    (``image_keys`` = what the image processor makes, found on the first image sample)."""
    try:
        enc = render(sample, processor, family=family, max_length=max_length, loss_on=data.loss_on,
                     system_prompt=data.system_prompt)
    except TooLong as exc:
        return "too_long", str(exc), image_keys
    except (RenderError, BadSample, OSError, ValueError) as exc:
        return getattr(exc, "reason", "render_error"), str(exc), image_keys
    if int((enc["labels"] != IGNORE).sum()) == 0:
        return "no_loss_tokens", "no token carries the loss", image_keys
    if sample.images and image_keys is None:
        image_keys = set(_image_part(sample, processor)) if hasattr(processor, "image_processor") else set()
    text = {k: v for k, v in enc.items() if not (sample.images and k in image_keys)}
    return "ok", text, image_keys


_worker: dict[str, Any] = {}


def _worker_init(processor: Any, family: Family, data: DataConfig, max_length: int) -> None:
    torch.set_num_threads(1)  # one core per worker: torch's default pool would oversubscribe
    _worker.update(processor=processor, family=family, data=data, max_length=max_length)


def _check_all(samples: list[Sample], processor: Any, family: Family, data: DataConfig, max_length: int):
    keys = None
    for sample in samples:
        status, payload, keys = _check(sample, processor, family, data, max_length, keys)
        yield status, payload, keys


def _check_chunk(samples: list[Sample]) -> list[tuple[str, Any, Any]]:
    """Worker side; tensors travel as numpy arrays (torch would pass each one as a file
    descriptor, and thousands of them exhaust the process's limit)."""
    def plain(enc: dict) -> dict:
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in enc.items()}

    return [(status, plain(payload) if status == "ok" else payload, keys)
            for status, payload, keys in _check_all(samples, **_worker)]


def _checked(samples: list[Sample], processor: Any, family: Family, data: DataConfig, max_length: int):
    """``_check`` of every sample, in order; in ``data.num_proc`` spawned processes when > 1
    (the pre-pass is pure Python per sample, so processes, not threads)."""
    if data.num_proc <= 1 or len(samples) < max(PARALLEL_MIN_ROWS, 2 * data.num_proc):
        yield from _check_all(samples, processor, family, data, max_length)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = max(1, min(256, len(samples) // (4 * data.num_proc)))
    chunks = [samples[i:i + size] for i in range(0, len(samples), size)]
    # spawn, not fork: the parent holds torch's thread pools, which a forked child can deadlock on
    pool = ProcessPoolExecutor(data.num_proc, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(processor, family, data, max_length))
    try:
        for results in pool.map(_check_chunk, chunks):
            for status, payload, keys in results:
                if status == "ok":
                    payload = {k: torch.from_numpy(v) if hasattr(v, "dtype") else v for k, v in payload.items()}
                yield status, payload, keys
    finally:  # also when the caller stops at a bad row: drop the chunks not started yet
        pool.shutdown(wait=True, cancel_futures=True)


def prepare(samples: list[Sample], processor: Any, data: DataConfig, max_length: int,
            bad_rows: BadRows, file: str, show_progress: bool = True, *, family: Family) -> RenderedDataset:
    """Render every sample once; keep those that fit, count the rest by reason."""
    kept: list[Sample] = []
    lengths: list[int] = []
    text_parts: list[dict[str, torch.Tensor]] | None = []
    image_keys: set[str] | None = None  # what the image processor makes, from the first image sample
    kept_tokens = 0
    results = track(_checked(samples, processor, family, data, max_length), total=len(samples),
                    description=f"checking {file}", disable=not show_progress, transient=True)
    for i, (sample, (status, payload, keys)) in enumerate(zip(samples, results)):
        if status == "ok":
            kept.append(sample)
            lengths.append(payload["input_ids"].shape[-1])
            image_keys = image_keys if image_keys is not None else keys
            kept_tokens += lengths[-1]
            if text_parts is not None:
                text_parts.append(payload)
                if kept_tokens > MAX_KEPT_TOKENS:
                    text_parts = None
            continue
        src_file, row = _location(sample, i, file)
        if status == "too_long" and data.on_too_long == "error":
            raise DataError(f"{file}: row {row}: too_long: {payload}")
        if status not in ("too_long", "no_loss_tokens") and data.on_bad_row == "error":
            raise DataError(f"{file}: row {row}: {status}: {payload}")
        bad_rows.add(src_file, row, status, payload)
    dataset = RenderedDataset(kept, processor, family, max_length, data.loss_on, data.system_prompt, lengths)
    # image_keys == set(): images but no image processor of its own -> always render in full
    if kept and text_parts is not None and (image_keys or image_keys is None):
        dataset.text_parts = text_parts
        first = next((i for i, x in enumerate(kept) if x.images), 0)
        if not _same(dataset[first], dataset.render(first)):  # the image processor alone differs
            dataset.text_parts = None
    return dataset


def split_train_eval(samples: list[Sample], val_split: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out a seeded random fraction (at least one sample when val_split > 0)."""
    if val_split <= 0:
        return samples, []
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(len(samples) * val_split))
    held = set(order[:n_eval])
    return ([s for i, s in enumerate(samples) if i not in held],
            [s for i, s in enumerate(samples) if i in held])


def load_datasets(data: DataConfig, processor: Any, max_length: int, seed: int, show_progress: bool = True,
                  *, family: Family) -> tuple[RenderedDataset, RenderedDataset | None, BadRows]:
    """Train and held-out datasets from the recipe's data section, with the bad-row report."""
    if not data.train_path:
        raise DataError("data.train_path is not set")
    name = describe(data.train_path)
    train, bad_rows = read_mixture(data.train_path, seed=seed, limit=data.limit, on_bad_row=data.on_bad_row)
    held: list[Sample] = []
    if data.eval_path:
        held, _ = read_samples(data.eval_path, on_bad_row=data.on_bad_row, bad_rows=bad_rows)
    elif data.val_split > 0:
        train, held = split_train_eval(train, data.val_split, seed)
        # a row a mixture repeats is held out once, and none of its copies is trained on
        held = list({id(s): s for s in held}.values())
        held_ids = {id(h) for h in held}
        train = [s for s in train if id(s) not in held_ids]
    train_ds = prepare(train, processor, data, max_length, bad_rows, name, show_progress, family=family)
    if len(train_ds) == 0:
        raise DataError(f"{name}: no usable training rows ({bad_rows.summary()})")
    eval_ds = None
    if held:
        eval_ds = prepare(held, processor, data, max_length, bad_rows,
                          data.eval_path or name, show_progress, family=family)
    return train_ds, eval_ds, bad_rows


def load_prompts(data: DataConfig, show_progress: bool = True) -> tuple[list[Sample], BadRows]:
    """Prompt samples for RL: a final assistant turn (a reference answer) is allowed but not
    needed; images are checked when read."""
    if not data.train_path:
        raise DataError("data.train_path is not set")
    prompts, bad_rows = read_mixture(data.train_path, limit=data.limit, on_bad_row=data.on_bad_row,
                                     require_assistant=False)
    if not prompts:
        raise DataError(f"{describe(data.train_path)}: no usable prompt rows ({bad_rows.summary()})")
    return prompts, bad_rows
