"""One registry helper for every extension point.

Tasks, converters, losses, advantage estimators, judges, synthetic datasets, generators,
environments and rewards are all named the same way:

- a built-in short name (``grpo``, ``clarify``, ``sokoban`` ...);
- ``package.module:attr`` for code on the Python path;
- ``path/to/file.py:attr`` for a file of your own (relative to a base directory, default
  the working directory).

Built-ins are kept as ``"module:attr"`` strings so that listing or checking names imports
nothing heavy (this module imports nothing of the project, so the recipe schema can check
names when a recipe loads). A misspelt name fails with the nearest valid one.

Adding a built-in is its own file plus one line in the table of its kind below; a user's
own extension needs no line at all.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class RegistryError(ValueError):
    """A name or ``module:attr`` spec that cannot be resolved; the message says why."""


def is_plugin_spec(spec: str) -> bool:
    """True for ``module:attr`` and ``file.py:attr`` (as opposed to a built-in name)."""
    where, sep, attr = spec.rpartition(":")
    return bool(sep and where and attr) and not where.startswith(("http", "https"))


def _import_file(path: Path, what: str) -> Any:
    """Import a ``.py`` file once per resolved path, under a stable unique module name."""
    if not path.is_file():
        raise RegistryError(f"{what}: file not found: {path}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    name = f"vlmtune_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise RegistryError(f"{what}: cannot import {path}")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        mspec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise RegistryError(f"{what}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise RegistryError(f"{what}: no module named {name!r}") from exc
        raise RegistryError(f"{what}: importing {name!r} failed: {exc}") from exc
    except Exception as exc:
        raise RegistryError(f"{what}: importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def load_object(spec: str, what: str = "object", base_dir: str | Path | None = None) -> Any:
    """The attribute named by ``module:attr`` or ``path/to/file.py:attr``.

    ``what`` names the spec in errors (e.g. ``"reward 'acc.py:fn'"``).
    """
    where, sep, attr = spec.strip().rpartition(":")
    if not sep or not where or not attr:
        raise RegistryError(f"{what}: expected 'module:attr' or 'path/to/file.py:attr', got {spec!r}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        module = _import_file(path, what)
    else:
        module = _import_module(where, what)
    if not hasattr(module, attr):
        public = [n for n in vars(module) if not n.startswith("_")]
        near = difflib.get_close_matches(attr, public, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise RegistryError(f"{what}: {where} has no attribute {attr!r}.{hint}")
    return getattr(module, attr)


class Registry:
    """Built-in names of one extension kind, plus ``module:attr`` / ``file.py:attr`` for any other.

    Args:
        kind: what the entries are, for messages ("task", "loss", ...).
        builtins: name -> ``"module:attr"`` (imported on first use) or the object itself.
    """

    def __init__(self, kind: str, builtins: dict[str, Any] | None = None, help: dict[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, Any] = dict(builtins or {})
        self._help: dict[str, str] = dict(help or {})

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """The built-in names, sorted."""
        return sorted(self._entries)

    def help(self, name: str) -> str:
        """The one-line description of a built-in ("" if it has none)."""
        return self._help.get(name, "")

    def register(self, name: str, obj: Any = None) -> Any:
        """Add a built-in: ``reg.register("x", obj)`` or as a decorator ``@reg.register("x")``."""
        if obj is not None:
            self._entries[name] = obj
            return obj

        def deco(target: Any) -> Any:
            self._entries[name] = target
            return target

        return deco

    def check(self, spec: str) -> str:
        """Validate a name without importing anything: a built-in, or well-formed ``module:attr``.

        Returns ``spec`` stripped; raises :class:`RegistryError` naming the nearest built-in.
        """
        spec = spec.strip()
        if spec in self._entries or is_plugin_spec(spec):
            return spec
        near = difflib.get_close_matches(spec, self._entries, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise RegistryError(f"unknown {self.kind} {spec!r}{hint}; built-in: {', '.join(self.names())}; "
                            f"or give 'module:attr' / 'path/to/file.py:attr'")

    def get(self, spec: str, base_dir: str | Path | None = None) -> Any:
        """The object named by ``spec`` (a built-in name, ``module:attr`` or ``file.py:attr``)."""
        spec = self.check(spec)
        entry = self._entries.get(spec, spec)
        if isinstance(entry, str):
            obj = load_object(entry, f"{self.kind} {spec!r}", base_dir)
            if spec in self._entries:
                self._entries[spec] = obj  # import a built-in once
            return obj
        return entry

    def describe(self) -> str:
        """One line for CLI help and docs: the built-in names and how to add your own."""
        return f"{', '.join(self.names())}, or module:attr / file.py:attr"

    def describe_each(self) -> str:
        """``name (its description); ...`` for CLI help: every built-in with what it is."""
        items = [f"{n} ({self._help[n]})" if self._help.get(n) else n for n in self.names()]
        return f"{'; '.join(items)}; or module:attr / file.py:attr"


def _table(kind: str, module: str, names: dict[str, str]) -> Registry:
    return Registry(kind, {name: f"{module}:{attr}" for name, attr in names.items()})


# --------------------------------------------------------------------------- the built-ins
# One table per extension kind. Each entry: name -> attribute of the kind's module.

LOSSES = _table("loss", "vlmtune.train.losses", {
    "grpo": "GRPO", "dr_grpo": "DR_GRPO", "dapo": "DAPO", "gspo": "GSPO"})
KL_ESTIMATORS = _table("KL estimator", "vlmtune.train.losses", {"k1": "kl_k1", "k3": "kl_k3"})
ADVANTAGES = _table("advantage estimator", "vlmtune.train.advantages", {
    "grpo": "group_advantages", "gigpo": "gigpo_advantages"})
ENVS = Registry("environment", {
    "sokoban": "vlmtune.envs.sokoban:SokobanEnv", "gui_click": "vlmtune.envs.gui_click:GuiClickEnv"})
# What group-centred rewards are divided by: fn(grouped rewards (num_groups, G), eps) -> divisor.
ADVANTAGE_SCALES = _table("advantage scale", "vlmtune.train.advantages", {
    "group": "group_std", "batch": "batch_std", "none": "no_scale"})
# A generation backend: a class built as cls(model, processor, *, system_prompt, batch_size, **options)
# whose generate(samples, params) returns completions (vlmtune.rollout.generator.Generator).
GENERATORS = Registry("generation backend", {"hf": "vlmtune.rollout.hf:HFGenerator",
                                              "http": "vlmtune.rollout.http:HTTPGenerator"},
                      help={"hf": "transformers generate in this process, batched",
                            "http": "OpenAI-compatible servers (vLLM, vlmtune serve), weights synced after each "
                                    "update"})


# A task is a class (or object) with ``name`` and ``score(samples, responses)``, plus optional
# hooks (``check``, ``expand``, ``report_sections``, ``demo``...; see vlmtune.eval.tasks).
TASKS = Registry("task", {
    "generic": "vlmtune.eval.tasks:GenericTask",
    "clarify": "vlmtune.tasks.clarify:ClarifyTask",
    "mcq": "vlmtune.tasks.mcq:MCQTask",
    "arlarena": "vlmtune.tasks.arlarena:ARLArenaTask",
    "gui_agent": "vlmtune.tasks.gui_agent:GuiAgentTask",
    "sokoban": "vlmtune.tasks.sokoban:SokobanTask",
}, help={
    "generic": "EM, token F1, ROUGE against the final assistant turn",
    "clarify": "answer, resolve, enumerate or ask: strategy by a judge, ClarifyVLM metrics",
    "mcq": "multiple-choice accuracy, strict and by letter",
    "arlarena": "agent trajectories: per-turn action accuracy, trajectory success",
    "gui_agent": "GUI-agent steps: action, target, step and task accuracy",
    "sokoban": "Sokoban agent turns as arlarena scores them; demo: expert data, SFT, GiGPO vs GRPO",
})
# A synthetic data set: fn(out_dir, n, *, seed, eval_n, image_size, **options) -> path(s) written.
SYNTH = Registry("synthetic data set", {
    "shapes": "vlmtune.data.builtin:make_shapes_dataset",
    "clarify": "vlmtune.tasks.clarify.data:make_clarify_dataset",
}, help={"shapes": "one coloured shape, short answers",
         "clarify": "the ambiguity-aware task: when to answer, enumerate or ask"})
# An offline judge: a class with the HTTP judge's judge_scores(batch, parser, meta) interface.
JUDGES = Registry("judge", {"rule": "vlmtune.tasks.clarify.judge:RuleJudge"})
# A reward: a function called as TRL calls it (keywords only), see vlmtune.rewards.registry.
REWARDS = Registry("reward", {
    **{n: f"vlmtune.rewards.rules:{n}"
       for n in ("exact_match", "normalized_match", "mc_letter", "format_reward", "box_iou", "length_penalty")},
    "aqua": "vlmtune.tasks.clarify.rewards:aqua",
    "clarify_rubric": "vlmtune.tasks.clarify.rewards:clarify_rubric",
})


def all_registries() -> dict[str, Registry]:
    """Every registry by kind (for ``docs`` generation and the registry test)."""
    return {r.kind: r for r in (LOSSES, KL_ESTIMATORS, ADVANTAGES, ADVANTAGE_SCALES, ENVS, GENERATORS, TASKS, SYNTH,
                                JUDGES, REWARDS)}


def pydantic_check(registry: Registry) -> Callable[[str], str]:
    """A validator for a recipe field holding a name of ``registry``."""

    def check(value: str) -> str:
        try:
            return registry.check(value)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None

    return check
