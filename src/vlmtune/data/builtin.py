"""A tiny built-in synthetic dataset ("shapes") for smoke runs and the demo.

Each sample is one image with ONE coloured shape (circle / square / triangle in red /
green / blue / yellow) on a plain background, a question about it and a short answer:

* "What colour is the shape?" -> ``"red."`` (three quarters of the samples)
* "What shape is this?" -> ``"A blue square."``

``meta`` holds the gold fields: ``shape``, ``colour``, ``question`` (``"colour"`` or
``"shape"``), ``answer`` (the single gold word), ``task`` (``"shapes"``), ``split``, ``id``.
Everything is deterministic given the seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from vlmtune.data.sample import Sample
from vlmtune.data.writers import write_jsonl

__all__ = ["COLOURS", "QUESTIONS", "SHAPES", "make_shapes_dataset", "shapes_samples"]

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}
BACKGROUNDS = ((250, 250, 250), (205, 205, 205), (45, 45, 45))
QUESTIONS = {"colour": "What colour is the shape?", "shape": "What shape is this?"}


def make_shapes_dataset(
    out_dir: str | Path, n: int = 64, seed: int = 0, image_size: int = 168, eval_n: int = 0
) -> Path:
    """Write the shapes dataset as canonical JSONL with PNG images.

    Layout: ``out_dir/train.jsonl``, ``out_dir/images/train-00000.png``...; with
    ``eval_n > 0`` also ``out_dir/eval.jsonl`` (images ``eval-*.png``), drawn from an
    independent random stream, so the eval split does not change when ``n`` does.

    Args:
        out_dir: Output folder (created).
        n: Number of training samples.
        seed: Random seed; the same seed gives byte-identical files.
        image_size: Width and height of the square images in pixels.
        eval_n: Number of eval samples (0 = no eval split).

    Returns:
        The path of ``train.jsonl`` (``eval.jsonl`` sits next to it when written).
    """
    out_dir = Path(out_dir)
    splits = {"train": n, "eval": eval_n}
    for split, count in splits.items():
        if split == "eval" and count <= 0:
            continue
        samples = shapes_samples(count, seed=seed, image_size=image_size, split=split)
        write_jsonl(_saved(samples, out_dir / "images"), out_dir / f"{split}.jsonl")
    return out_dir / "train.jsonl"


def shapes_samples(n: int, seed: int = 0, image_size: int = 168, split: str = "train") -> Iterator[Sample]:
    """Generate shapes samples in memory (images are PIL images).

    Args:
        n: Number of samples.
        seed: Random seed (each split has its own stream).
        image_size: Width and height in pixels.
        split: Split name, used for the stream and in ``meta``.

    Yields:
        Canonical samples with one image each.
    """
    rng = random.Random(f"shapes-{split}-{seed}")
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        question = "shape" if rng.random() < 0.25 else "colour"
        image = draw_shape(rng, shape, COLOURS[colour], image_size)
        answer = f"A {colour} {shape}." if question == "shape" else f"{colour}."
        meta = {
            "task": "shapes",
            "split": split,
            "id": f"{split}-{i:05d}",
            "shape": shape,
            "colour": colour,
            "question": question,
            "answer": shape if question == "shape" else colour,
        }
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[question]}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]
        yield Sample(messages=messages, images=[image], meta=meta)


def draw_shape(rng: random.Random, shape: str, colour: tuple[int, int, int], size: int) -> Image.Image:
    """Draw one filled shape at a random place and size on a plain background."""
    image = Image.new("RGB", (size, size), rng.choice(BACKGROUNDS))
    side = rng.randint(int(size * 0.3), int(size * 0.6))
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    box = (x0, y0, x0 + side - 1, y0 + side - 1)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0 + side / 2, y0), (x0, box[3]), (box[2], box[3])], fill=colour)
    return image


def _saved(samples: Iterator[Sample], image_dir: Path) -> Iterator[Sample]:
    """Save each sample's PIL image as ``<id>.png`` and reference it by path."""
    image_dir.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        path = image_dir / f"{sample.meta['id']}.png"
        sample.images[0].save(path, format="PNG")
        yield Sample(messages=sample.messages, images=[path], meta=sample.meta)
