"""ARLArena game-agent trajectories: one multi-turn conversation per trajectory.

Input: what ARLArena's ``recipe/game_agent/eval_game_agent.py`` writes — a JSON file holding
a list of trajectories — or a folder of such files (``json_to_parquet.py`` takes a folder
too; the Parquet files it writes, one row per trajectory, are read as well)::

    [{"sample_idx": 3, "task_score": 1.0,
      "turns": [{"step": 0,
                 "inputs": [{"role": "user", "content": "... <image> ..."}],
                 "outputs": "<think>...</think><answer>...</answer>",
                 "image": {"format": "png_base64", "data": "iVBOR..."}},
                {"step": 1, "inputs": [...], "outputs": "...", "image": null}, ...]}, ...]

A turn's ``image`` is inline (``{"format": "png_base64", "data": ...}``, or a list of
them) or ``null``: that turn has no image, and ``<image>`` markers left in its text are
removed; so does a turn without an ``image`` key in a file without images (the earliest
eval script wrote no images). An older shape is read too: trajectory-level ``"images":
{"format", "data": [...]}`` with a turn's ``image`` an index (or key) into ``data``, or no
``image`` key (the next unused images, one per marker). Markers become image parts in
place; a turn with an image but no marker gets the image in front of its user text.

Conversation: the first turn's system message (if any), then per turn one user message (the
turn's user inputs joined; assistant inputs, i.e. replayed history, are left out since the
previous turns are already in the conversation) and one assistant message (``outputs``).
With ``per_turn`` each turn becomes its own sample instead: the (system and) user message
of that turn with its images, and its answer -- the prompt a policy that sees one turn at a
time (``vlmtune rollout``, ``vlmtune grpo`` with ``env``) is given; ``meta.step`` numbers
the turns. ``min_score`` keeps trajectories with ``task_score > min_score`` (the seed used 0.9); others
are counted as skipped with reason ``below_min_score``. Rows are 0-based trajectory indices
within their file; ``meta.source_file`` names the file (``sample_idx`` restarts per file).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmtune.data.converters.base import (
    IMAGE_MARKER, ConvertError, Context, Record, check_columns, iter_records, record_columns, text_with_images,
)
from vlmtune.data.sample import BadSample, Sample

COLUMNS = {"sample_idx": "sample_idx", "task_score": "task_score", "turns": "turns", "images": "images"}
REQUIRED = ("turns",)
_FORMATS = ("png_base64", "jpeg_base64", "jpg_base64", "base64")


def samples(ctx: Context) -> Iterator[Sample]:
    """Yield one sample per kept trajectory, or per turn of it (see the module docstring)."""
    for file in ctx.files((".json", ".parquet")):
        for row, traj in _trajectories(file, ctx):
            try:
                if isinstance(traj, BadSample):
                    raise traj
                _check_score(traj, ctx)
                sample = _sample(traj, ctx)
            except BadSample as e:
                ctx.bad(file, row, e.reason, e.detail)
                continue
            for part in split_turns(sample) if ctx.per_turn else [sample]:
                part.meta["source_file"] = file.name
                part.source = (str(file), row)
                yield part


def split_turns(sample: Sample) -> list[Sample]:
    """One sample per user/assistant pair of a conversation (a leading system message kept
    in each), with the images of that user turn; ``meta.step`` is the turn's index."""
    system = [m for m in sample.messages[:1] if m["role"] == "system"]
    rest = sample.messages[len(system):]
    images = iter(sample.images)
    out = []
    for step in range(0, len(rest) - 1, 2):
        user, answer = rest[step], rest[step + 1]
        n = sum(1 for p in user["content"] if p["type"] == "image")
        out.append(Sample(messages=[*system, user, answer], images=[next(images) for _ in range(n)],
                          meta={**sample.meta, "step": step // 2}))
    return out


def _trajectories(file: Path, ctx: Context) -> Iterator[Record]:
    """``(row, trajectory)`` of one file, after checking it has the required columns."""
    if file.suffix.lower() == ".parquet":
        check_columns(file, record_columns(file), ctx, REQUIRED)
        yield from iter_records(file, batch_size=8)  # a row holds a whole trajectory's images
        return
    trajectories = _load(file)
    if trajectories:
        first = trajectories[0]
        check_columns(file, list(first) if isinstance(first, dict) else [], ctx, REQUIRED)
    yield from enumerate(trajectories)


def _load(file: Path) -> list:
    try:
        data = json.loads(file.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(file, reason="malformed_json", detail=f"file is not valid JSON: {e}") from None
    return data if isinstance(data, list) else [data]


def _check_score(traj: Any, ctx: Context) -> None:
    if ctx.min_score is None:
        return
    score = traj.get(ctx.col("task_score")) if isinstance(traj, dict) else None
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise BadSample("below_min_score", f"no numeric task_score (got {score!r}) with min_score {ctx.min_score}")
    if not score > ctx.min_score:
        raise BadSample("below_min_score", f"task_score {score} <= min_score {ctx.min_score}")


def _sample(traj: Any, ctx: Context) -> Sample:
    if not isinstance(traj, dict):
        raise BadSample("bad_schema", f"trajectory is a {type(traj).__name__}, expected an object")
    turns = traj.get(ctx.col("turns"))
    if not isinstance(turns, list) or not turns:
        raise BadSample("bad_schema", "'turns' must be a non-empty list")
    pool = _ImagePool(traj.get(ctx.col("images")))
    messages: list[dict] = []
    images: list[bytes] = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadSample("bad_schema", f"turns[{t}] is not an object")
        system, user = _turn_inputs(turn, t)
        if system is not None and not messages:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        turn_images = pool.for_turn(turn, user.count(IMAGE_MARKER), t)
        if turn_images is None:  # "image": null -- the turn has no image
            turn_images, user = [], user.replace(IMAGE_MARKER, "")
        content = text_with_images(user)
        if IMAGE_MARKER not in user and turn_images:
            content = [{"type": "image"} for _ in turn_images] + content
        images.extend(turn_images)
        messages.append({"role": "user", "content": content})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": _output_text(turn, t)}]})
    meta = {
        "sample_idx": traj.get(ctx.col("sample_idx")),
        "task_score": traj.get(ctx.col("task_score")),
        "num_turns": len(turns),
    }
    return Sample(messages=messages, images=images, meta=meta)


def _turn_inputs(turn: dict, t: int) -> tuple[str | None, str]:
    inputs = turn.get("inputs")
    if isinstance(inputs, str):
        return None, inputs
    if not isinstance(inputs, list) or not inputs:
        raise BadSample("bad_schema", f"turns[{t}].inputs must be a non-empty list of messages")
    system, user = None, []
    for m in inputs:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadSample("bad_schema", f"turns[{t}].inputs holds a message without string content")
        role = m.get("role")
        if role == "system":
            system = m["content"] if system is None else system
        elif role == "user":
            user.append(m["content"])
        elif role != "assistant":
            raise BadSample("bad_schema", f"turns[{t}].inputs has unknown role {role!r}")
    if not user:
        raise BadSample("bad_schema", f"turns[{t}].inputs has no user message")
    return system, "\n".join(user)


def _output_text(turn: dict, t: int) -> str:
    out = turn.get("outputs")
    if isinstance(out, list) and out:
        out = out[0]
    if isinstance(out, dict):
        out = out.get("content")
    if not isinstance(out, str) or not out.strip():
        raise BadSample("bad_schema", f"turns[{t}].outputs has no text")
    return out


class _ImagePool:
    """A trajectory's images: inline per turn, or (older shape) a trajectory-level list
    handed out by index/key or in order."""

    def __init__(self, spec: Any) -> None:
        self.data: list | dict | None = None
        self.next = 0
        if spec is None:
            return
        if not isinstance(spec, dict) or "data" not in spec:
            raise BadSample("bad_schema", "'images' must be {format, data}")
        _check_format(spec, "images")
        if not isinstance(spec["data"], (list, dict)):
            raise BadSample("bad_schema", "images.data must be a list or an object")
        self.data = spec["data"]

    def for_turn(self, turn: dict, n_markers: int, t: int) -> list[bytes] | None:
        """The turn's images; ``None`` when the turn has none (``image`` null, or neither an
        ``image`` key nor trajectory-level images, as the earliest eval script wrote)."""
        ref = turn.get("image")
        if ref is None:
            return self._in_order(n_markers, t) if "image" not in turn and self.data is not None else None
        refs = ref if isinstance(ref, list) else [ref]
        return [self._get(r, f"turns[{t}].image" + (f"[{i}]" if isinstance(ref, list) else ""))
                for i, r in enumerate(refs)]

    def _in_order(self, n_markers: int, t: int) -> list[bytes]:
        if not isinstance(self.data, list):
            if n_markers:
                raise BadSample("missing_image", f"turns[{t}] has <image> but no 'image' key")
            return []
        start, self.next = self.next, self.next + n_markers
        if self.next > len(self.data):
            raise BadSample("placeholder_mismatch", f"turns[{t}] needs image {self.next - 1}, "
                                                    f"trajectory has {len(self.data)}")
        return [_decode(self.data[i], f"images.data[{i}]") for i in range(start, self.next)]

    def _get(self, ref: Any, where: str) -> bytes:
        if isinstance(ref, dict):  # inline, as eval_game_agent.py writes it
            _check_format(ref, where)
            return _decode(ref.get("data"), f"{where}.data")
        if isinstance(ref, str) and isinstance(self.data, dict) and ref in self.data:
            return _decode(self.data[ref], f"images.data[{ref!r}]")
        if isinstance(ref, int) and not isinstance(ref, bool) and isinstance(self.data, list):
            if not 0 <= ref < len(self.data):
                raise BadSample("missing_image", f"{where} {ref} out of range ({len(self.data)} images)")
            return _decode(self.data[ref], f"images.data[{ref}]")
        if isinstance(ref, str) and len(ref) > 64:  # a bare base64 string
            return _decode(ref, where)
        raise BadSample("missing_image", f"{where}: {_short(ref)} is neither an inline image "
                                         f"{{format, data}} nor an index into 'images'")


def _check_format(spec: dict, where: str) -> None:
    fmt = str(spec.get("format", "png_base64")).lower()
    if fmt not in _FORMATS:
        raise BadSample("bad_schema", f"unsupported {where}.format {fmt!r} (supported: {_FORMATS})")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _decode(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadSample("missing_image", f"{where} is empty or not a base64 string")
    payload = value.partition(",")[2] if value.startswith("data:") else value
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadSample("unreadable_image", f"{where}: invalid base64: {e}") from None
