"""The run lifecycle both engines share, so each engine file keeps only its loop.

torchtune's recipes follow one fixed lifecycle (setup -> train -> save_checkpoint ->
cleanup) but copy it into every recipe; here it is written once and the engines call it
(composition: a :class:`Run` is an object the loop uses, not a base class it extends)::

    with Run.start(recipe) as run:                       # accelerator, seed, run dir, config.yaml
        ...load the model and data...
        model = run.shard(model, family)                 # FSDP: this process's shard (else as is)
        ...optimizer, scheduler...
        model, optimizer = run.prepare(model, optimizer) # DDP wrapper, device placement
        ...batch stream...
        run.resume(model, optimizer, scheduler, stream)  # checkpoint restored; metrics, compute
        for step in range(run.start_step + 1, steps + 1):
            ...forward, backward...
            if run.step_ok(step, loss=loss, lr=lr, grad_norm=norm):
                optimizer.step()
            run.log(step, metrics)
            run.maybe_save(step, steps)
        return run.finish(steps, summary, processor, bad_rows)  # final/, summary, skipped rows

Safety lives here too: an earlier run in ``output.dir`` is refused unless the recipe
resumes it or overwrites it; a non-finite loss, learning rate or gradient norm stops the
run naming the step (or skips the step, by setting); every file write names its path when
the disk is full or the directory is not writable.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from vlmtune.compute_report import device_info, write_compute_report
from vlmtune.config import ConfigError, Recipe, save_recipe
from vlmtune.flops import model_flops
from vlmtune.outputs import make_dir, writing
from vlmtune.tracking import ComputeMeter, MetricsLogger, json_safe
from vlmtune.trackers import accelerate_trackers, flat_config, init_kwargs, scalars
from vlmtune.train import checkpoint as ckpt
from vlmtune.train.card import model_card
from vlmtune.train.distributed import check_mode, layout, several_processes_without_accelerator, shard

# Everything a run writes into output.dir; output.overwrite=true removes exactly these.
ENV_ERRORS_FILE = "env_errors.jsonl"  # multi-turn GRPO: episodes whose environment raised
RUN_FILES = ("config.yaml", "metrics.jsonl", "tb", "checkpoints", "final", "run_summary.json", "skipped_rows.jsonl",
             "wandb", "mlruns", "compute_report.json", "compute_report.md", ENV_ERRORS_FILE)
# A directory holding any of these has seen training (config.yaml alone: a run that failed
# before its first step, e.g. on a wrong model path, which is safe to start again).
_TRAINED = RUN_FILES[1:]


class RunStopped(RuntimeError):
    """The run stopped on purpose before its end (a non-finite loss, say); the message
    names the step and why. The last complete checkpoint is kept; no ``final/`` is written."""


def make_accelerator(precision: str, log_with: list[str] | None = None, project_dir: Path | None = None) -> Any:
    """An Accelerator for one run. accelerate keeps its state in a process-wide singleton;
    it is reset first so runs with different precisions can follow each other in one
    process (the demo, tests, notebooks). The distributed process group is kept.
    ``log_with`` names accelerate trackers (:mod:`vlmtune.trackers`). Several processes on a
    machine without GPUs run on the CPU with gloo, whatever the launcher's config says."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", log_with=log_with or None,
                       cpu=several_processes_without_accelerator(),
                       project_dir=str(project_dir) if project_dir is not None else None)


def earlier_run(run_dir: Path) -> list[str]:
    """The files of an earlier run's training in ``run_dir`` (empty for a fresh directory)."""
    return [name for name in _TRAINED if (run_dir / name).exists()]


def check_run_dir(recipe: Recipe) -> Path:
    """Refuse to train into an earlier run unless the recipe resumes or overwrites it:
    starting over silently would mix two runs' metrics and checkpoints."""
    run_dir = Path(recipe.output.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output.dir={run_dir} is a file, not a directory")
    found = earlier_run(run_dir)
    if found and recipe.resume_from is None and not recipe.output.overwrite:
        raise ConfigError(f"output.dir={run_dir} already holds a run ({', '.join(found)}); pass resume_from=auto "
                          "to continue it or output.overwrite=true to replace it")
    return run_dir


def clear_run(run_dir: Path) -> None:
    """Remove an earlier run's files (only the ones a run writes; anything else stays)."""
    for name in RUN_FILES:
        path = run_dir / name
        with writing(path):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    path = run_dir / "run_summary.json"
    with writing(path):
        path.write_text(json.dumps(json_safe(summary), indent=1))


LINE_KEYS = ("loss", "eval_loss", "reward_mean", "reward_std", "lr", "grad_norm", "completion_len_mean",
             "tokens_per_s", "step_seconds")
"""The metrics a per-step console line shows, in this order, when a step has them."""


def step_line(step: int, metrics: dict[str, Any]) -> str:
    """``step 3  loss 1.234  lr 0.0002  ...``: the headline numbers of one logged step."""
    parts = [f"step {step}"]
    for key in LINE_KEYS:
        value = metrics.get(key)
        if value is not None:
            parts.append(f"{key} {float(value):.4g}")
    return "  ".join(parts)


def _family(model: Any) -> Any | None:
    from vlmtune.models.families import family_for

    try:
        return family_for(model)
    except (ValueError, TypeError):
        return None  # a text-only model: everything counts as language model


class Run:
    """One training run's setup, resume, checkpoints, logging, step guard and final save."""

    def __init__(self, recipe: Recipe, run_dir: Path, accelerator: Any, show_progress: bool = True,
                 engine: str = "sft"):
        self.recipe, self.dir, self.accelerator, self.engine = recipe, run_dir, accelerator, engine
        self.layout = layout(recipe.train.distributed, accelerator)
        check_mode(recipe.train.mode, self.layout)
        self.show_progress = show_progress  # without the bar, each logged step prints a line
        self.start_step = 0
        self.nonfinite_skipped = 0
        self.logger: MetricsLogger | None = None
        self.meter: ComputeMeter | None = None
        self._trainables: tuple[Any, Any, Any, Any] | None = None  # model, optimizer, scheduler, stream
        self._console = Console(stderr=True)

    # ------------------------------------------------------------------ setup
    @classmethod
    def start(cls, recipe: Recipe, show_progress: bool = True, engine: str = "sft") -> Run:
        """Check and prepare ``output.dir``, save the resolved recipe, make the accelerator
        and seed everything. Every process checks the directory before the main process
        changes it, so all of them agree on refusing."""
        from accelerate.utils import set_seed

        run_dir = check_run_dir(recipe)
        trackers = accelerate_trackers(recipe)
        accelerator = make_accelerator(recipe.train.precision, trackers, run_dir)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if recipe.output.overwrite:
                clear_run(run_dir)
            make_dir(run_dir)
            with writing(run_dir / "config.yaml"):
                save_recipe(recipe, run_dir / "config.yaml")
        accelerator.wait_for_everyone()
        if trackers:
            accelerator.init_trackers(recipe.output.project, config=flat_config(recipe),
                                      init_kwargs=init_kwargs(trackers, run_dir))
        set_seed(recipe.train.seed)
        return cls(recipe, run_dir, accelerator, show_progress, engine)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def shard(self, model: Any, family: Any) -> Any:
        """Under FSDP, ``model`` cut into one shard per process (in place; build the optimizer
        after this, over the sharded parameters); otherwise ``model`` as it is."""
        if not self.layout.sharded:
            return model
        return shard(model, family, self.accelerator.device, self.recipe.train.precision)

    def prepare(self, model: Any, optimizer: Any) -> tuple[Any, Any]:
        """accelerate's device placement, DDP wrapper and mixed precision; a sharded model is
        already placed and must not be wrapped again (accelerate would put DDP around it on a
        CPU, or shard it a second way under an FSDP config)."""
        if self.layout.sharded:
            return model, optimizer
        return self.accelerator.prepare(model, optimizer)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.logger is not None:
            self.logger.close()
        # the trackers' runs end here; not accelerator.end_training(), which would also end the
        # process group that later runs in this process still use
        trackers, self.accelerator.trackers = self.accelerator.trackers, []
        for tracker in trackers:
            tracker.finish()

    # ------------------------------------------------------------------ resume
    def resume(self, model: Any, optimizer: Any, scheduler: Any, stream: Any) -> dict[str, Any]:
        """Register what a checkpoint holds and, when ``resume_from`` says so, restore it.

        Sets :attr:`start_step`, opens the metrics log (truncated to the resumed step) and
        the compute meter (continuing the checkpoint's totals). Returns the checkpoint's
        trainer state ({} for a fresh run) for engine-specific extras."""
        self._trainables = (model, optimizer, scheduler, stream)
        inner = self.accelerator.unwrap_model(model)
        state: dict[str, Any] = {}
        found = ckpt.resolve_resume(self.recipe.resume_from, self.dir)
        if found is not None:
            state = ckpt.load_checkpoint(found, inner, optimizer, scheduler, sharded=self.layout.sharded)
            stream.epoch, stream.cursor = state["data"]["epoch"], state["data"]["cursor"]
        self.start_step = state.get("step", 0)
        self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
        self.meter = ComputeMeter(model_flops(inner, _family(inner), self.recipe.train.gradient_checkpointing),
                                  carried=state.get("compute"), n_params=sum(p.numel() for p in inner.parameters()))
        resumed = self.recipe.resume_from is not None
        self.logger = MetricsLogger(self.dir, enabled=self.is_main, resume_step=self.start_step if resumed else None,
                                    tensorboard="tensorboard" in self.recipe.output.report_to)
        return state

    # ------------------------------------------------------------------ during the loop
    def step_ok(self, step: int, **values: float | torch.Tensor | None) -> bool:
        """Whether the optimizer may take this step: every value given (loss, lr, grad norm)
        is finite on every process. Otherwise ``train.on_nonfinite=stop`` raises
        :class:`RunStopped` naming the step and the values, and ``skip`` counts the step and
        returns False (the caller leaves the weights alone)."""
        bad = {k: float(v) for k, v in values.items() if v is not None and not math.isfinite(float(v))}
        if not self._any_process(bool(bad)):
            return True
        what = ", ".join(f"{k} {v}" for k, v in bad.items()) or "a value on another process"
        if self.recipe.train.on_nonfinite == "stop":
            last = ckpt.checkpoints(self.dir)
            kept = f"last complete checkpoint: {last[-1]}" if last else "no checkpoint was written"
            raise RunStopped(f"step {step}: non-finite {what} (train.on_nonfinite=stop; "
                             f"'skip' skips such steps instead); {kept}")
        self.nonfinite_skipped += 1
        if self.is_main:
            self._console.print(f"[yellow]step {step}: non-finite {what}; optimizer step skipped "
                                f"({self.nonfinite_skipped} so far)")
        return False

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write the step's metrics (the engines call it every ``train.log_every`` steps); with
        the progress bar off, also print them as one line, so a log file shows the run."""
        if self.recipe.train.on_nonfinite == "skip":
            metrics = {**metrics, "nonfinite_skipped": self.nonfinite_skipped}
        row = self.logger.log(step, metrics)
        if self.accelerator.trackers:
            self.accelerator.log(scalars(row), step=step)
        if not self.show_progress and self.is_main:
            self._console.print(step_line(step, metrics), markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """A notice the user should see once (the main process prints it)."""
        if self.is_main:
            self._console.print(f"[yellow]{message}", highlight=False)

    def log_text(self, step: int, tag: str, text: str) -> None:
        self.logger.log_text(step, tag, text)

    def maybe_save(self, step: int, steps: int, **extra: Any) -> None:
        """A periodic checkpoint every ``train.save_every`` steps (the last one is :meth:`finish`'s)."""
        every = self.recipe.train.save_every
        if every and step % every == 0 and step < steps:
            self.save(step, **extra)

    def save(self, step: int, **extra: Any) -> None:
        """Checkpoint once every process has reached the same step: from the main process, or
        under FSDP from every process (each writes its shard); the compute totals so far go
        with it so a resumed run keeps counting."""
        model, optimizer, scheduler, stream = self._trainables
        compute = self.compute()
        self.accelerator.wait_for_everyone()
        if self.is_main or self.layout.sharded:
            state = {"data": stream.state(), "compute": compute, "nonfinite_skipped": self.nonfinite_skipped, **extra}
            ckpt.save_checkpoint(self.dir, step, self.accelerator.unwrap_model(model), optimizer, scheduler,
                                 state, self.recipe.train.keep_last, sharded=self.layout.sharded)

    def compute(self) -> dict[str, Any]:
        """The run's compute totals over all processes (a collective: every process calls it)."""
        return self.meter.summary(self._gather)

    # ------------------------------------------------------------------ the end
    def finish(self, steps: int, summary: dict[str, Any], processor: Any, bad_rows: Any,
               **extra: Any) -> dict[str, Any]:
        """Final checkpoint, ``final/`` (loadable by transformers/peft as is, with a model card),
        the skipped rows,
        ``run_summary.json``; waits for every process. Returns the summary on every process."""
        self.save(steps, **extra)
        summary = {**summary, "compute": self.compute(), "skipped_rows": bad_rows.counts(),
                   "distributed": self.layout.summary()}
        if self.recipe.train.on_nonfinite == "skip":
            summary["nonfinite_skipped"] = self.nonfinite_skipped
        model = self.accelerator.unwrap_model(self._trainables[0])
        # a sharded model is gathered to the main process first (every process takes part)
        gathered = {"state_dict": ckpt.full_state_for_saving(model)} if self.layout.sharded else {}
        if self.is_main:
            final = self.dir / "final"
            with writing(final):
                model.save_pretrained(str(final), safe_serialization=True, **gathered)
                processor.save_pretrained(str(final))
                (final / "README.md").write_text(model_card(self.recipe, summary, self.engine), encoding="utf-8")
            with writing(self.dir / "skipped_rows.jsonl"):
                bad_rows.write_jsonl(self.dir / "skipped_rows.jsonl")
            write_summary(self.dir, summary)
            write_compute_report(self.dir, summary["compute"], self.meter.flops, device_info(self.accelerator))
        self.logger.close()
        self.accelerator.wait_for_everyone()
        return summary

    # ------------------------------------------------------------------ across processes
    def _gather(self, values: list[float]) -> list[list[float]]:
        """Every process's ``values`` (one row per process)."""
        if self.accelerator.num_processes == 1:
            return [values]
        mine = torch.tensor([values], dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.gather(mine).tolist()

    def _any_process(self, flag: bool) -> bool:
        return any(row[0] for row in self._gather([float(flag)]))
