"""How a run spreads over processes: one process, DDP (a full copy per process, gradients
averaged) or FSDP (every parameter, gradient and optimizer state cut into one shard per
process, layers gathered only while they run).

The launcher decides how many processes there are (``accelerate launch``, ``torchrun``);
what they do with the model is :func:`layout`:

    train.distributed=auto   FSDP when the accelerate config says so (``distributed_type:
                             FSDP``, which accelerate passes on as ACCELERATE_USE_FSDP),
                             DDP when there are several processes, else one process
    train.distributed=fsdp   FSDP whatever the launcher (``torchrun``)
    train.distributed=ddp    DDP even under an FSDP accelerate config

vlmtune applies FSDP2 (``torch.distributed.fsdp.fully_shard``) itself, on every device, instead
of leaving it to ``accelerator.prepare``: accelerate only turns FSDP on for GPUs, so on a CPU
an FSDP config would silently run unsharded copies. One sharding code path for CPU (gloo) and
GPU (NCCL) means the tests on two CPU processes exercise what an 8-GPU run does.

What becomes one FSDP unit (gathered as a whole, freed after its forward): every module whose
class the model lists in ``_no_split_modules`` (transformers' own "never cut this" list: the
decoder layers and the vision tower's blocks), the vision tower and the projector (the family
table's parts; ``generate`` calls them directly, outside the model's forward, so their own
weights such as the patch embedding must gather on their own call), the transformers model
under a PEFT wrapper (``PeftModel.generate`` calls it directly), and finally the root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch

Kind = Literal["single", "ddp", "fsdp"]


@dataclass(frozen=True)
class Layout:
    kind: Kind
    processes: int

    @property
    def sharded(self) -> bool:
        return self.kind == "fsdp"

    def summary(self) -> dict[str, Any]:
        """What ``run_summary.json`` records as ``distributed``."""
        return {"type": self.kind, "processes": self.processes}


def accelerate_asks_fsdp(accelerator: Any) -> bool:
    """The accelerate config names FSDP: accelerate's own state on GPUs, its launcher's
    environment on a CPU (where accelerate drops it)."""
    from accelerate.utils import DistributedType, parse_flag_from_env

    return accelerator.distributed_type == DistributedType.FSDP or parse_flag_from_env("ACCELERATE_USE_FSDP")


def layout(requested: str, accelerator: Any) -> Layout:
    """The run's layout from ``train.distributed`` and the launcher (see the module docstring)."""
    from accelerate.utils import DistributedType, parse_flag_from_env

    from vlmtune.config import ConfigError

    n = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ConfigError("DeepSpeed launches are not supported by the engines yet; use "
                          "recipes/accelerate/fsdp.yaml (FSDP2) for sharded training (docs/scaling.md)")
    if n == 1:
        return Layout("single", 1)
    fsdp = requested == "fsdp" or (requested == "auto" and accelerate_asks_fsdp(accelerator))
    if fsdp and parse_flag_from_env("ACCELERATE_USE_FSDP") and parse_flag_from_env("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        # transformers would then load real weights on the first process only (the others get
        # placeholders, to be broadcast by accelerate's own FSDP, which vlmtune does not use)
        raise ConfigError("the accelerate config sets fsdp_cpu_ram_efficient_loading: true, which vlmtune does "
                          "not support (every process loads the model, then it is sharded); set it to false as "
                          "recipes/accelerate/fsdp.yaml does")
    return Layout("fsdp" if fsdp else "ddp", n)


def check_mode(mode: str, layout: Layout) -> None:
    """What a training mode needs from the layout, checked before the model loads."""
    if layout.sharded and mode == "qlora":
        from vlmtune.config import ConfigError

        raise ConfigError("train.mode=qlora cannot be sharded with FSDP (4-bit weights are not DTensors); "
                          "use train.mode=lora over a bfloat16 base, or train.distributed=ddp")


def several_processes_without_accelerator() -> bool:
    """Launched as several processes on a machine with no GPU (or other accelerator): accelerate
    must be told to use the CPU (gloo), or it would start them as independent single-process
    runs, all writing the same run directory."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def fsdp_units(model: torch.nn.Module, family: Any) -> list[torch.nn.Module]:
    """The modules that become FSDP units, innermost first (``fully_shard`` must see a child
    before its parent, so the parent's unit keeps only what no child took)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    keep = set(getattr(inner, "_no_split_modules", None) or ())
    named = [(name, mod) for name, mod in model.named_modules() if type(mod).__name__ in keep]
    if family is not None:
        named += [pair for part in ("vision", "projector") for pair in family.modules(model, part)]
    named.sort(key=lambda pair: -pair[0].count("."))
    units = list({id(mod): mod for _, mod in named}.values())
    if inner is not model:
        units.append(inner)
    return units


def shard(model: torch.nn.Module, family: Any, device: torch.device, precision: str) -> torch.nn.Module:
    """FSDP2 over all processes, in place: parameters become DTensors holding this process's
    shard (on ``device``). With bf16 precision, layers compute in bf16 and gradients are
    reduced in fp32, over fp32 sharded weights."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()
    for unit in fsdp_units(model, family):
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    # FSDP picks its root at the first forward; generate's first call is the vision tower's
    # (outside the model's forward), which would make the tower a root of its own and fail
    # the model's forward after it. Settle the root now (torch has no public call for it).
    model._get_fsdp_state()._lazy_init()
    # transformers' generate then keeps every process stepping until all are done
    # (``synced_gpus``): each step gathers layers, a collective every process must join.
    for mod in model.modules():
        if hasattr(mod, "generate") and hasattr(mod, "config"):
            mod._is_fsdp_managed_module = True
    return model
