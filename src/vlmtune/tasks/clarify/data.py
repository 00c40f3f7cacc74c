"""The synthetic ambiguity-aware task ("clarify"): when to answer, resolve, enumerate or ask.

Each sample is one 168 px image of a 3×3 grid of cells on a plain light background; 8 of
the 9 cells hold one big, flat, coloured shape (circle / square / triangle / star / diamond
/ cross in red / green / blue / yellow / orange / purple / black; small shapes span 36 px
(squares 32 px), big ones 50 px, i.e. 2.5 and 3.5 patches of 14 px). The question asks
for the colour of a shape *type* ("What colour is the triangle?"), sometimes with a
referring phrase ("the triangle on the left", "the big triangle"). The gold strategy
level depends only on how many shapes of the asked type the image holds and on whether
the phrase singles one out:

========  =========================================  ======================================
level     image / question                           reference response (assistant turn)
========  =========================================  ======================================
L0        exactly one shape of the asked type,       "The triangle is red."
          with or without a phrase
L1        2–5 of the type, the phrase picks          "The triangle you are referring to is
          exactly one of them                        the one on the left: it is red."
L2        2–3 of the type, no phrase                 "The triangle: there are two, a red
                                                     triangle at the top left and a blue
                                                     triangle in the centre."
L3        4–5 of the type, no phrase                 "The triangle? There are four
                                                     triangles. Which one do you mean?"
========  =========================================  ======================================

Every response starts with the asked type ("The triangle", copied from the question), and
the token right after the type word is the strategy (" is" / " you" / ":" / "?"). So the
decision is taken at the position whose own input is the type word: one attention step
from that word to the image tokens of its type (how many there are) decides it. A small
model trained from scratch learns that lookup several times faster than one whose query
must first fetch the type from the question (docs/clarify.md, "Why the responses start
with the type").

**Counting questions (auxiliary task).** With ``counting_share`` > 0 the train split also
gets ``counting.jsonl``: for a share of the training images, "How many triangles are
there?" about a type drawn uniformly from the types in the image (level-blind), answered
with the count sentence of the L3 reference ("There are four triangles."). They share the
clarify images and never enter the eval split.

**Labelling rule for questions with a phrase.** A phrase question is L0 when the asked
type occurs once (the phrase is redundant but true) and L1 when it occurs two or more
times (the phrase is needed and resolves it). A phrase is only ever used when it is true
of the target both absolutely and relatively: "on the left/right" = the target is in the
left/right column and no other shape of its type is; "at the top/bottom" likewise for the
top/bottom row; "the big/small X" = the target is big/small and every other X is not.
So with a phrase, L0 vs L1 is decided by counting the asked type in the image, exactly
as L0 vs L2 vs L3 is without one. Half of the L0 questions carry a phrase.

**No shortcut reveals the level.** A scene (its profile of type counts, layout, sizes,
colours, background) is drawn by one generator that does not know the level, and kept
only if it supports *every* level (a singleton type, a 2–3 type, a 4–5 type, and a
pre-drawn phrase kind that can single out a singleton for L0 and a member of a multi type
for L1); only then is the level taken from a balanced schedule and the asked type picked
from the scene. Every scene holds 8 shapes of 3–4 types with counts (1, 3, 4), (1, 2, 5)
or (1, 1, 2, 4). Hence total count, sizes, layout and colour statistics are identically
distributed across levels, the asked type is uniform over types at every level, and the
phrase kinds of L0-with-phrase and L1 questions have the same distribution. Only counting
the asked type in the image tells the level (with a phrase: L0 vs L1; without: L0 vs L2
vs L3). An image-blind classifier can at best separate "phrase" (L0/L1) from "no phrase"
(L0/L2/L3), i.e. stays at chance (1/3) on L0/L2/L3.

Files written by :func:`make_clarify_dataset` (all deterministic: same seed, same bytes):

* ``train.jsonl`` / ``val.jsonl`` (with ``val_n``) / ``eval.jsonl``: canonical samples
  (``images/<split>-NNNNN.png``).
* ``abl_ambiguous.jsonl`` / ``abl_unambiguous.jsonl``: ClarifyVLM's ABL-like schema,
  one row per L2/L3 resp. L0/L1 sample of every split: ``image_filename`` (relative to the
  file), ``qa`` (a JSON string ``{"question", "answers": {"1": correct, "2": wrong,
  "3": wrong, "4": clarification}}``; the gold choice is "4" for ambiguous and "1" for
  unambiguous rows, as in ClarifyVLM's evaluation), ``entity_description`` (a JSON string
  ``{"target": type, "entities": [...asked-type shapes...]}``), ``sentences`` (one per
  shape), ``count_label`` (number of asked-type shapes), ``boxes`` (their
  ``[x0, y0, x1, y1]``), plus ``level``, ``split``, ``id``.
* ``aqua.jsonl``: AQuA-like rows ``image``, ``question``, ``level`` (0–3), ``response``
  (the gold reference), plus ``split``, ``id``.

``meta`` of each canonical sample: ``task`` ("clarify"), ``split``, ``id``, ``level``
("L0".."L3"), ``type`` ("unambig" for L0/L1, "ambig" for L2/L3), ``question``,
``target_type``, ``count`` (asked-type shapes), ``phrase`` (kind or None), ``answer``
(gold colour for L0/L1, None for L2/L3), ``references`` ({"L0".."L3": response or None};
"L2" is None when only one shape of the type exists), ``choices`` (the four ABL answers),
``mc_gold`` (1-based gold choice: 1 unambig, 4 ambig), ``facts`` (the RuleJudge schema:
``true`` = one sentence per shape, ``candidates`` = "<colour> <type>" of every asked-type
shape, ``false`` = wrong-colour statements), ``scene`` (every shape's type, colour, cell,
position, size, box, px), ``background`` and ``prompt_variant``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Container, Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from vlmtune.data.sample import Sample
from vlmtune.data.writers import write_jsonl

__all__ = [
    "COLOURS", "LEVELS", "PHRASE_KINDS", "SYSTEM_PROMPTS", "TYPES", "clarify_samples",
    "cell_labels", "count_sentence", "draw_scene", "make_clarify_dataset", "scene_key",
]

LEVELS = ("L0", "L1", "L2", "L3")
TYPES = ("circle", "square", "triangle", "star", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
           "diamond": "diamonds", "cross": "crosses"}
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 220),
           "yellow": (235, 195, 0), "orange": (245, 130, 0), "purple": (140, 40, 180),
           "black": (20, 20, 20)}
BACKGROUNDS = ((250, 250, 250), (222, 222, 222), (245, 238, 220))
GRID = 3  # 3×3 cells of 56 px at 168 px: 2×2 merged image tokens per cell
N_SHAPES = 8  # always 8 shapes in 9 cells, whatever the level
PROFILES = ((1, 3, 4), (1, 2, 5), (1, 1, 2, 4))  # type-count profiles, level-blind
SIZE_FRACTION = {"small": 0.64, "big": 0.9}  # of the cell side: 36 / 50 px at 168 px
PHRASE_KINDS = ("left", "right", "top", "bottom", "big", "small")
L0_PHRASE_SHARE = 0.5
CELL_POSITIONS = (("at the top left", "at the top centre", "at the top right"),
                  ("at the middle left", "in the centre", "at the middle right"),
                  ("at the bottom left", "at the bottom centre", "at the bottom right"))
"""Cell names used in enumerations and facts (distinct from the question phrases, which
name a whole column or row: "on the left" = any cell of the left column)."""
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
COUNT_QUESTION = "How many {plural} are there?"
QUESTION_TEMPLATES = ("What colour is {ref}?", "What is the colour of {ref}?",
                      "Which colour does {ref} have?")

SYSTEM_PROMPTS = (
    None,
    "Answer the question about the image. If it could refer to more than one object, "
    "do not guess: list the possibilities or ask which one is meant.",
    "You answer questions about images and adapt your strategy to how ambiguous the "
    "question is.\n"
    "- If exactly one object fits the question, answer directly.\n"
    "- If several objects fit but the question's wording (a position or a size) singles "
    "one out, say which one you are referring to, then answer.\n"
    "- If two or three objects fit and nothing singles one out, list each of them with "
    "its answer.\n"
    "- If four or more objects fit and nothing singles one out, ask a short clarifying "
    "question about which one is meant.\n"
    "Never state anything that is not in the image.",
)
"""System prompts for ``prompt_variant`` 0 (none), 1 (short rule) and 2 (long rule)."""


# ---------------------------------------------------------------------------- public API


def make_clarify_dataset(out_dir: str | Path, n: int, seed: int = 0, eval_n: int | None = None,
                         image_size: int = 168, prompt_variant: int = 0,
                         counting_share: float = 0.0, val_n: int = 0) -> dict[str, Path]:
    """Write the clarify task: canonical train/eval JSONL + PNGs and ABL/AQuA-like files.

    Args:
        out_dir: Output folder (created).
        n: Number of training samples (levels balanced: ``n // 4`` each, the remainder
            spread over L0, L1, ...).
        seed: Random seed; the same arguments give byte-identical files.
        eval_n: Number of eval samples; ``None`` = ``max(4, n // 4)``, 0 = no eval split.
            The eval split has its own random stream, so it does not change with ``n``.
        image_size: Side of the square images in pixels (168 = 6×6 merged tokens for the
            tiny Qwen-VL models).
        prompt_variant: 0 no system prompt, 1 short rule prompt, 2 long rule prompt
            (see :data:`SYSTEM_PROMPTS`); only the canonical files depend on it.
        counting_share: Expected counting questions per training image (0–1), written to
            ``counting.jsonl`` (the auxiliary task of the module docstring); 0 = no file.
        val_n: Number of validation samples (``val.jsonl``, its own random stream, like
            eval's), for choosing settings without looking at the eval split; 0 = none.

    No scene of the eval split occurs in the train or validation split (:func:`scene_key`):
    a drawn scene that does is replaced by the next draw.

    Returns:
        ``{"train", "val" (if written), "eval" (if written), "counting" (if written),
        "abl_ambiguous", "abl_unambiguous", "aqua", "images"}`` -> paths.
    """
    if prompt_variant not in (0, 1, 2):
        raise ValueError(f"prompt_variant must be 0, 1 or 2, got {prompt_variant!r}")
    if not 0.0 <= counting_share <= 1.0:
        raise ValueError(f"counting_share must be between 0 and 1, got {counting_share!r}")
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    eval_n = max(4, n // 4) if eval_n is None else eval_n
    paths: dict[str, Path] = {}
    written: dict[str, list[Sample]] = {}
    held_out: set[tuple] = set()  # the eval scenes, kept out of the other splits
    for split, count in (("eval", eval_n), ("val", val_n), ("train", n)):  # eval first, see held_out
        if count <= 0:
            continue
        saved = []
        for sample in clarify_samples(count, seed=seed, image_size=image_size, split=split,
                                      prompt_variant=prompt_variant, exclude=held_out):
            path = image_dir / f"{sample.meta['id']}.png"
            sample.images[0].save(path, format="PNG", compress_level=1)  # 1.6x faster than 6, same pixels
            saved.append(Sample(messages=sample.messages, images=[path], meta=sample.meta))
        if split == "eval":
            held_out = {scene_key(x.meta["scene"]) for x in saved}
        written[split] = saved
        paths[split] = out_dir / f"{split}.jsonl"
        write_jsonl(saved, paths[split], image_dir=image_dir)
        if split == "train" and counting_share > 0:
            paths["counting"] = out_dir / "counting.jsonl"
            write_jsonl(list(_counting_questions(saved, counting_share, seed)), paths["counting"],
                        image_dir=image_dir)
    rows = [(x, x.images[0]) for split in ("train", "val", "eval") for x in written.get(split, [])]
    paths.update(_write_schema_files(rows, out_dir))
    paths["images"] = image_dir
    return paths


def clarify_samples(n: int, seed: int = 0, image_size: int = 168, split: str = "train",
                    prompt_variant: int = 0, exclude: Container[tuple] = ()) -> Iterator[Sample]:
    """Generate clarify samples in memory (images are PIL images); see the module docstring.

    Args:
        n: Number of samples; levels follow a shuffled balanced schedule.
        seed: Random seed (each split has its own stream).
        image_size: Image side in pixels.
        split: Split name, used for the stream, ids and ``meta``.
        prompt_variant: System prompt variant (0, 1, 2).
        exclude: :func:`scene_key` values not to draw (another split's scenes); a scene that
            matches one is replaced by the next draw.

    Yields:
        Canonical samples with one image each, ending with the gold assistant turn.
    """
    rng = random.Random(f"clarify-{split}-{seed}")
    schedule = [LEVELS[i % 4] for i in range(n)]
    rng.shuffle(schedule)
    system = SYSTEM_PROMPTS[prompt_variant]
    for i, level in enumerate(schedule):
        scene, kind = _feasible_scene(rng)
        while scene_key(scene) in exclude:
            scene, kind = _feasible_scene(rng)
        background = rng.choice(BACKGROUNDS)
        item = _question_for(rng, scene, kind, level)
        _place(rng, scene, image_size)
        image = draw_scene(scene, background, image_size)
        meta = _meta(scene, item, level, split, f"{split}-{i:05d}", background, prompt_variant)
        messages = [] if system is None else [
            {"role": "system", "content": [{"type": "text", "text": system}]}]
        messages += [
            {"role": "user",
             "content": [{"type": "image"}, {"type": "text", "text": item["question"]}]},
            {"role": "assistant", "content": [{"type": "text", "text": meta["references"][level]}]},
        ]
        yield Sample(messages=messages, images=[image], meta=meta)


def _counting_questions(samples: list[Sample], share: float, seed: int) -> Iterator[Sample]:
    """"How many triangles are there?" about a type drawn uniformly from each chosen image's
    types, answered with :func:`count_sentence`; same system prompt and image as the sample."""
    rng = random.Random(f"clarify-counting-{seed}")
    for sample in samples:
        if rng.random() >= share:
            continue
        scene = sample.meta["scene"]
        t = rng.choice(sorted({o["type"] for o in scene}))
        n = sum(o["type"] == t for o in scene)
        question = COUNT_QUESTION.format(plural=PLURALS[t])
        messages = [m for m in sample.messages if m["role"] == "system"] + [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": count_sentence(t, n)}]},
        ]
        meta = {"task": "counting", "split": sample.meta["split"], "id": f"{sample.meta['id']}-count",
                "question": question, "target_type": t, "count": n}
        yield Sample(messages=messages, images=sample.images, meta=meta)


def scene_key(scene: list[dict]) -> tuple:
    """What makes two scenes the same scene: every shape's cell, type, colour and size (not the
    pixel offsets inside the cells, nor the background)."""
    return tuple(sorted((*o["cell"], o["type"], o["colour"], o["size"]) for o in scene))


def cell_labels(scene: list[dict], rows: int, cols: int) -> tuple[list[int], list[int]]:
    """Per image token of a ``rows`` × ``cols`` grid (row-major): the shape type (index in
    :data:`TYPES`, ``len(TYPES)`` for an empty cell) and colour (index in :data:`COLOURS`,
    ``len(COLOURS)`` for empty) of the scene cell the token lies in. Labels for
    :func:`vlmtune.train.vision_warmup.warm_up_vision`."""
    by_cell = {tuple(o["cell"]): o for o in scene}
    colours = list(COLOURS)
    types, tints = [], []
    for r in range(rows):
        for c in range(cols):
            o = by_cell.get((r * GRID // rows, c * GRID // cols))
            types.append(TYPES.index(o["type"]) if o else len(TYPES))
            tints.append(colours.index(o["colour"]) if o else len(COLOURS))
    return types, tints


def draw_scene(scene: list[dict], background: tuple[int, int, int], size: int) -> Image.Image:
    """Draw placed shapes (each with ``type``, ``colour`` and ``box``) on a plain background."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for obj in scene:
        _draw_shape(draw, obj["type"], COLOURS[obj["colour"]], obj["box"])
    return image


# ---------------------------------------------------------------------------- scenes


def _random_scene(rng: random.Random) -> list[dict]:
    """A level-blind scene: type counts from :data:`PROFILES`, cells, colours, sizes."""
    profile = rng.choice(PROFILES)
    types = rng.sample(TYPES, len(profile))
    cells = rng.sample(range(GRID * GRID), N_SHAPES)
    scene, k = [], 0
    for t, count in zip(types, profile):
        colours = rng.sample(list(COLOURS), count)  # distinct colours within a type
        for c in colours:
            row, col = divmod(cells[k], GRID)
            scene.append({"type": t, "colour": c, "cell": [row, col],
                          "position": CELL_POSITIONS[row][col],
                          "size": rng.choice(("small", "big"))})
            k += 1
    scene.sort(key=lambda o: (o["cell"][0], o["cell"][1]))  # reading order
    return scene


def _phrase_fits(obj: dict, others: list[dict], kind: str) -> bool:
    """Whether phrase ``kind`` is true of ``obj`` and of no other shape of its type."""
    def holds(o: dict) -> bool:
        row, col = o["cell"]
        return {"left": col == 0, "right": col == GRID - 1, "top": row == 0,
                "bottom": row == GRID - 1, "big": o["size"] == "big",
                "small": o["size"] == "small"}[kind]
    return holds(obj) and not any(holds(o) for o in others)


def _options(scene: list[dict], kind: str) -> dict[str, list[tuple[str, int]]]:
    """(type, index of target) choices per role for a scene and phrase kind."""
    by_type: dict[str, list[int]] = {}
    for i, o in enumerate(scene):
        by_type.setdefault(o["type"], []).append(i)
    out: dict[str, list[tuple[str, int]]] = {"single": [], "few": [], "many": [],
                                             "single_phrase": [], "resolved": []}
    for t, idx in by_type.items():
        count = len(idx)
        role = "single" if count == 1 else "few" if count <= 3 else "many"
        out[role].append((t, idx[0]))
        for i in idx:
            others = [scene[j] for j in idx if j != i]
            if _phrase_fits(scene[i], others, kind):
                out["single_phrase" if count == 1 else "resolved"].append((t, i))
    return out


def _feasible_scene(rng: random.Random) -> tuple[list[dict], str]:
    """Draw (scene, phrase kind) until the pair supports every level; level-blind."""
    while True:
        scene, kind = _random_scene(rng), rng.choice(PHRASE_KINDS)
        opts = _options(scene, kind)
        if all(opts[r] for r in ("single", "few", "many", "single_phrase", "resolved")):
            return scene, kind


def _question_for(rng: random.Random, scene: list[dict], kind: str, level: str) -> dict:
    """Pick the asked type (and target and phrase) for ``level`` from a feasible scene."""
    opts = _options(scene, kind)
    phrase = None
    if level == "L0":
        if rng.random() < L0_PHRASE_SHARE:
            t, target = rng.choice(opts["single_phrase"])
            phrase = kind
        else:
            t, target = rng.choice(opts["single"])
    elif level == "L1":
        t, target = rng.choice(opts["resolved"])
        phrase = kind
    else:
        t, target = rng.choice(opts["few" if level == "L2" else "many"])
    template = rng.choice(QUESTION_TEMPLATES)
    return {"type": t, "target": target, "phrase": phrase,
            "question": template.format(ref=_referring(t, phrase))}


def _place(rng: random.Random, scene: list[dict], image_size: int) -> None:
    """Give every shape a pixel box inside its cell (size by class, random offset)."""
    cell = image_size / GRID
    for o in scene:
        side = int(round(cell * SIZE_FRACTION[o["size"]]))
        slack = max(0, int(cell) - side)
        x0 = int(o["cell"][1] * cell) + rng.randint(0, slack)
        y0 = int(o["cell"][0] * cell) + rng.randint(0, slack)
        o["box"] = [x0, y0, x0 + side - 1, y0 + side - 1]
        o["px"] = side


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int],
                box: list[int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        m = w * 0.06
        draw.rectangle((x0 + m, y0 + m, x1 - m, y1 - m), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x0, y1), (x1, y1)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif shape == "cross":
        t = w * 0.17
        draw.rectangle((cx - t, y0, cx + t, y1), fill=colour)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=colour)
    elif shape == "star":
        r_out, r_in = w / 2, w / 2 * 0.45
        pts = []
        for k in range(10):
            r = r_out if k % 2 == 0 else r_in
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * math.cos(a), cy + 0.08 * w + r * math.sin(a)))
        draw.polygon(pts, fill=colour)
    else:  # pragma: no cover - TYPES is closed
        raise ValueError(f"unknown shape {shape!r}")


# ---------------------------------------------------------------------------- texts


def _referring(t: str, phrase: str | None) -> str:
    """"the triangle", "the triangle on the left", "the big triangle"."""
    if phrase is None:
        return f"the {t}"
    if phrase in ("big", "small"):
        return f"the {phrase} {t}"
    return f"the {t} " + {"left": "on the left", "right": "on the right", "top": "at the top",
                          "bottom": "at the bottom"}[phrase]


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def count_sentence(t: str, n: int) -> str:
    """"There is one triangle." / "There are four triangles." (n >= 1)."""
    return f"There is one {t}." if n == 1 else f"There are {COUNT_WORDS[n]} {PLURALS[t]}."


def _references(scene: list[dict], item: dict) -> dict[str, str | None]:
    """One reference response per strategy, each classified as its level by
    :func:`vlmtune.tasks.clarify.judge.rule_strategy` with the sample's candidates. Every
    response starts "The <asked type>", and the word right after the type word is the
    strategy: " is" (answer), " you" (resolve), ":" (enumerate), "?" (ask)."""
    t, phrase = item["type"], item["phrase"]
    members = [o for o in scene if o["type"] == t]
    target = scene[item["target"]]
    colour = target["colour"]
    if phrase is not None:
        l1 = f"The {t} you are referring to is {_referring('one', phrase)}: it is {colour}."
    elif len(members) == 1:
        l1 = f"The {t} you are referring to is the only one: it is {colour}."
    else:
        l1 = f"The {t} you are most likely referring to is the one {target['position']}: it is {colour}."
    l2 = None
    if len(members) >= 2:
        listed = [f"{_a(o['colour'])} {o['colour']} {t} {o['position']}" for o in members]
        l2 = f"The {t}: there are {COUNT_WORDS[len(members)]}, {_join(listed)}."
    return {"L0": f"The {t} is {colour}.", "L1": l1, "L2": l2,
            "L3": f"The {t}? {count_sentence(t, len(members))} Which one do you mean?"}


def _meta(scene: list[dict], item: dict, level: str, split: str, sid: str,
          background: tuple[int, int, int], prompt_variant: int) -> dict:
    t, phrase = item["type"], item["phrase"]
    members = [o for o in scene if o["type"] == t]
    target = scene[item["target"]]
    ambiguous = level in ("L2", "L3")
    refs = _references(scene, item)
    absent = [c for c in COLOURS if c not in {o["colour"] for o in members}]
    ref = _referring(t, phrase)
    # ABL choices: 1 a correct direct answer (for ambiguous questions: right for one of
    # the referents), 2 and 3 wrong colours (absent from the asked type), 4 a clarification.
    subject = ref[0].upper() + ref[1:]
    choices = [f"{subject} is {target['colour']}.", f"{subject} is {absent[0]}.",
               f"{subject} is {absent[1]}.", f"Which {t} do you mean?"]
    # Wrong-colour statements in every form the references use: "<c> <type>" and "<type> is
    # <c>" for colours no shape of the type has; "<c> <type> <position>" for a colour that
    # shape does not have (an enumeration that swaps two colours); for the target of an
    # unambiguous question, "<phrase> is <c>" and the resolved answer's "it is <c>".
    false = [f"{c} {t}" for c in absent] + [f"{t} is {c}" for c in absent]
    false += [f"{c} {t} {o['position']}" for o in members for c in COLOURS
              if c != o["colour"] and c not in absent]
    if not ambiguous:
        wrong = [c for c in COLOURS if c != target["colour"]]
        false += [s for c in wrong for s in (f"{ref[4:]} is {c}", f"it is {c}") if s not in false]
    return {
        "task": "clarify",
        "split": split,
        "id": sid,
        "level": level,
        "type": "ambig" if ambiguous else "unambig",
        "question": item["question"],
        "target_type": t,
        "count": len(members),
        "phrase": phrase,
        "answer": None if ambiguous else target["colour"],
        "references": refs,
        "choices": choices,
        "mc_gold": 4 if ambiguous else 1,
        "facts": {
            "true": [f"a {o['size']} {o['colour']} {o['type']} {o['position']}" for o in scene],
            "candidates": [f"{o['colour']} {t}" for o in members],
            "false": false,
        },
        "scene": [dict(o) for o in scene],
        "target": None if ambiguous else scene.index(target),
        "background": list(background),
        "prompt_variant": prompt_variant,
    }


# ---------------------------------------------------------------------------- schema files


def _dump(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def _write_schema_files(rows: list[tuple[Sample, Path]], out_dir: Path) -> dict[str, Path]:
    paths = {k: out_dir / f"{k}.jsonl" for k in ("abl_ambiguous", "abl_unambiguous", "aqua")}
    files = {k: [] for k in paths}
    for sample, image in rows:
        m = sample.meta
        rel = image.relative_to(out_dir).as_posix()
        members = [o for o in m["scene"] if o["type"] == m["target_type"]]
        qa = {"question": m["question"],
              "answers": {str(k + 1): c for k, c in enumerate(m["choices"])}}
        entities = {"target": m["target_type"],
                    "entities": [{k: o[k] for k in ("type", "colour", "position", "size", "box")}
                                 for o in members]}
        abl = {"image_filename": rel, "qa": _dump(qa), "entity_description": _dump(entities),
               "sentences": m["facts"]["true"], "count_label": len(members),
               "boxes": [o["box"] for o in members], "level": m["level"], "split": m["split"],
               "id": m["id"]}
        files["abl_ambiguous" if m["type"] == "ambig" else "abl_unambiguous"].append(abl)
        files["aqua"].append({"image": rel, "question": m["question"],
                              "level": LEVELS.index(m["level"]),
                              "response": m["references"][m["level"]],
                              "split": m["split"], "id": m["id"]})
    for key, path in paths.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(_dump(r) + "\n" for r in files[key]), encoding="utf-8")
        tmp.replace(path)
    return paths
