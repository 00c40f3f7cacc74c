"""Complete, atomic, resumable checkpoints.

A checkpoint ``checkpoints/step-N/`` holds the trainable weights (the full model, or the
PEFT adapter, as safetensors), optimizer and scheduler state, RNG states and the trainer
state (step, data position). It is written to a temporary directory and renamed into
place only when complete, so a process killed mid-write leaves the previous checkpoint
intact and ``resume_from=auto`` picks that one.

Under FSDP (``sharded=True``) every process takes part: each writes its shard of the weights
(``pytorch_model_fsdp_0/``, accelerate's folder name) and of the optimizer state
(``optimizer_0/``) with ``torch.distributed.checkpoint``, and its own RNG state; the main
process writes the rest (config, scheduler, trainer state) and completes the checkpoint. An
adapter's shards carry peft's saved names, a full model's the live module names, so
``vlmtune export`` reads either into a plain transformers folder (:mod:`vlmtune.weights`).
A sharded checkpoint resumes on any number of processes (the shards are re-cut on load),
but only sharded: ``trainer_state.json`` records the layout that wrote it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmtune.outputs import writing
from vlmtune.weights import live_state_dict, read_weights

COMPLETE = "COMPLETE"
SHARDED_WEIGHTS = "pytorch_model_fsdp_0"
SHARDED_OPTIMIZER = "optimizer_0"


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def save_weights(model: Any, out: Path) -> None:
    """Full model or adapter, as safetensors, loadable by transformers/peft as is."""
    model.save_pretrained(str(out), safe_serialization=True)


def load_weights(model: Any, ckpt: Path) -> None:
    """Load a checkpoint's weights (any format :mod:`vlmtune.weights` reads) into ``model``;
    a checkpoint of another model is an error naming the keys that do not match."""
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, read_weights(ckpt, "adapter_model"))
        return
    missing, unexpected = model.load_state_dict(live_state_dict(model, ckpt), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or {})
    if unexpected or [k for k in missing if k not in tied and "lm_head" not in k]:
        raise RuntimeError(f"{ckpt}: checkpoint does not match the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


def save_checkpoint(run_dir: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                    trainer_state: dict[str, Any], keep_last: int, sharded: bool = False) -> Path:
    """Write ``checkpoints/step-N`` atomically. A failed write (a full disk, say) removes its
    partial temporary directory and raises :class:`~vlmtune.outputs.OutputError` naming the
    checkpoint; the previous checkpoints stay as they were.

    Unsharded, only the main process calls it; sharded (FSDP), every process does."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    rank, main = _rank()
    tmp = root / f".tmp-step-{step}-{_main_pid(sharded)}"
    with writing(final):
        if main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        _barrier(sharded)
        try:
            _write_checkpoint(tmp, step, model, optimizer, scheduler, trainer_state, sharded, rank)
        except BaseException:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if main:
            if final.exists():  # re-saving the same step (e.g. final save after a periodic one)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
    if main:
        prune(root, keep_last)
    _barrier(sharded)
    return final


def _rank() -> tuple[int, bool]:
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return rank, rank == 0


def _barrier(sharded: bool) -> None:
    if sharded:
        torch.distributed.barrier()


def _main_pid(sharded: bool) -> int:
    """The main process's id, which names the temporary directory all processes write into."""
    if not sharded:
        return os.getpid()
    pid = [os.getpid()]
    torch.distributed.broadcast_object_list(pid, src=0)
    return pid[0]


def _write_checkpoint(tmp: Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                      trainer_state: dict[str, Any], sharded: bool, rank: int) -> None:
    import torch.distributed.checkpoint as dcp

    main = rank == 0
    if sharded:
        dcp.save(sharded_weights(model), checkpoint_id=str(tmp / SHARDED_WEIGHTS))
        dcp.save(sharded_optimizer(model, optimizer), checkpoint_id=str(tmp / SHARDED_OPTIMIZER))
        _save(rng_state(), tmp / f"rng-rank{rank}.pt" if rank else tmp / "rng.pt")
        if main:
            _save_config(model, tmp)
    else:
        save_weights(model, tmp)
        _save(optimizer.state_dict(), tmp / "optimizer.pt")
        _save(rng_state(), tmp / "rng.pt")
    _barrier(sharded)  # every shard and RNG file is written before the checkpoint is completed
    if main:
        _save(scheduler.state_dict(), tmp / "scheduler.pt")
        layout = {"sharded": sharded, "shards": torch.distributed.get_world_size() if sharded else 1}
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state, "layout": layout},
                                                           indent=1))
        (tmp / COMPLETE).write_text("ok\n")
        _fsync_dir(tmp)


def _save(obj: Any, path: Path) -> None:
    # Through a Python file object: a full disk then surfaces as OSError(ENOSPC) in the
    # error's context instead of only torch's "unexpected pos" message.
    with open(path, "wb") as fh:
        torch.save(obj, fh)


def _save_config(model: Any, out: Path) -> None:
    """What a sharded checkpoint needs beside its shards to be exported alone: the model's
    config (or the adapter's)."""
    if _is_peft(model):
        model.peft_config[model.active_adapter].save_pretrained(str(out))
    else:
        model.config.save_pretrained(str(out))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(str(out))


# --------------------------------------------------------------------------- sharded state
def _trainable_only(model: Any) -> bool:
    """An adapter checkpoint holds the adapter (and modules_to_save), not the frozen base."""
    return _is_peft(model)


def _live_and_saved(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """This process's shards under the module names (to set them) and under the names a
    checkpoint holds (peft's adapter names for an adapter; the same names for a full model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    live = get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=_trainable_only(model)))
    if not _is_peft(model):
        return live, live
    from peft import get_peft_model_state_dict

    return live, get_peft_model_state_dict(model, state_dict=live)


def sharded_weights(model: Any) -> dict[str, Any]:
    return _live_and_saved(model)[1]


def sharded_optimizer(model: Any, optimizer: Any) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer)


def load_sharded(ckpt: Path, model: Any, optimizer: Any) -> None:
    """Each process reads its shards (re-cut when the process count changed) into the model
    and the optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    live, saved = _live_and_saved(model)
    dcp.load(saved, checkpoint_id=str(ckpt / SHARDED_WEIGHTS))
    name_of = {id(tensor): name for name, tensor in live.items()}  # peft's renaming keeps the tensors
    loaded = {name_of[id(tensor)]: tensor for tensor in saved.values()}
    set_model_state_dict(model, loaded, options=StateDictOptions(strict=not _trainable_only(model)))
    state = sharded_optimizer(model, optimizer)
    dcp.load(state, checkpoint_id=str(ckpt / SHARDED_OPTIMIZER))
    set_optimizer_state_dict(model, optimizer, state)


def full_state_for_saving(model: Any) -> dict[str, Any] | None:
    """The whole (unsharded) state of a sharded model, gathered to the main process's CPU
    memory (a collective: every process calls it; the others get None). An adapter gathers
    its trainable part only."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=_trainable_only(model))
    state = get_model_state_dict(model, options=options)
    return state if _rank()[1] else None


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def prune(root: Path, keep_last: int) -> None:
    for old in checkpoints(root.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a killed writer
        if str(os.getpid()) not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)


def resolve_resume(resume_from: str | None, run_dir: Path) -> Path | None:
    """``auto`` = the latest complete checkpoint in the run dir (None if there is none)."""
    if resume_from is None:
        return None
    if resume_from == "auto":
        found = checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"resume_from={path}: not a complete checkpoint (no {COMPLETE} marker)")
    return path


def load_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any, sharded: bool = False) -> dict[str, Any]:
    """Restore everything saved by :func:`save_checkpoint`; returns the trainer state. Sharded,
    every process calls it and restores its own RNG state (the main process's when the run
    now has more processes than the one that wrote it)."""
    state = json.loads((ckpt / "trainer_state.json").read_text())
    written = state.get("layout", {}).get("sharded", False)
    if written != sharded:
        from vlmtune.config import ConfigError

        how = "sharded (FSDP)" if written else "unsharded"
        raise ConfigError(f"resume_from={ckpt}: the checkpoint was written {how} and this run is "
                          f"{'sharded' if sharded else 'unsharded'}; resume with the layout that wrote it "
                          "(train.distributed), or start a new run from its weights (vlmtune export)")
    if sharded:
        load_sharded(ckpt, model, optimizer)
    else:
        load_weights(model, ckpt)
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rank = _rank()[0]
    mine = ckpt / f"rng-rank{rank}.pt"
    set_rng_state(torch.load(mine if rank and mine.is_file() else ckpt / "rng.pt", weights_only=True))
    return state
