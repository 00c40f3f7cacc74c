"""The ``vlmtune`` command. Each verb parses its arguments and calls one module."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from vlmtune.quiet import hide_library_progress_bars, quiet_third_party  # noqa: E402
from vlmtune.tracking import json_safe  # noqa: E402  (light: no torch import at module level)

quiet_third_party()

Handler = Callable[[argparse.Namespace], "int | None"]
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def verb(name: str, help: str, args: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn`` as ``vlmtune NAME``; ``args`` adds the verb's arguments."""
    def register(fn: Handler) -> Handler:
        VERBS[name] = (help, args, fn)
        return fn

    return register


def _recipe_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.config import add_recipe_args

    add_recipe_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def _load(args: argparse.Namespace):
    from vlmtune.config import recipe_from_args

    return recipe_from_args(args)


@verb("sft", "supervised fine-tuning (full, LoRA, QLoRA, freezing) from a YAML recipe", _recipe_args)
def cmd_sft(args: argparse.Namespace) -> int:
    from vlmtune.train.sft import run_sft

    summary = run_sft(_load(args), show_progress=not args.no_progress)
    print(json.dumps(json_safe(summary), indent=1))
    return 0


def _make_tiny_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", nargs="?", help="output directory")
    p.add_argument("--family", help="model family (see --list)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list", action="store_true", help="print the families and exit")


@verb("make-tiny", "build a tiny random-weight VLM of a real family, offline", _make_tiny_args)
def cmd_make_tiny(args: argparse.Namespace) -> int:
    from vlmtune.models.families import list_families
    from vlmtune.models.tiny import make_tiny

    if args.list:
        print("\n".join(list_families()))
        return 0
    if not args.family or not args.out:
        raise SystemExit("make-tiny needs --family F and OUT (or --list)")
    out = make_tiny(args.family, args.out, seed=args.seed)
    print(f"wrote tiny {args.family} model to {out}")
    return 0


@verb("grpo", "GRPO-family reinforcement learning with reward functions and judges", _recipe_args)
def cmd_grpo(args: argparse.Namespace) -> int:
    from vlmtune.train.grpo import run_grpo

    summary = run_grpo(_load(args), show_progress=not args.no_progress)
    print(json.dumps(json_safe(summary), indent=1))
    return 0


def _option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set`` (the value read as YAML: 3, 0.5, true, [a, b], text)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), yaml.safe_load(value)


def _set_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--set", dest="options", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help=f"an option of the {what} (repeatable; the value is read as YAML)")


def call_with_options(fn: Callable, what: str, options: dict, **given: object) -> object:
    """``fn(**given, **options)``, naming the option ``fn`` does not take in a one-line error
    (a task's or data set's options differ; ``given`` are those every one takes)."""
    import inspect

    from vlmtune.config import ConfigError

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(**given, **options)
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        takes = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise ConfigError(f"the {what} takes no option {', '.join(map(repr, unknown))}; its options: "
                              f"{', '.join(n for n in takes if n not in given) or 'none'}")
    return fn(**given, **options)


def _registry_arg(name: str) -> Callable[[str], str]:
    from vlmtune import registry
    from vlmtune.eval.run import registry_arg

    return registry_arg(getattr(registry, name))


def _synth_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.registry import SYNTH

    p.add_argument("task", type=_registry_arg("SYNTH"), metavar="DATASET",
                   help=f"the data set: {SYNTH.describe_each()}")
    p.add_argument("out", help="output directory (JSONL + images)")
    p.add_argument("--n", type=int, default=64, help="training samples")
    p.add_argument("--eval-n", type=int, default=None,
                   help="held-out samples (eval.jsonl; default: the data set's, shapes 0, clarify max(4, n/4))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=168)
    p.add_argument("--prompt-variant", type=int, choices=[0, 1, 2], default=None,
                   help="clarify: no / short / long system prompt (default 0)")
    p.add_argument("--counting-share", type=float, default=None,
                   help="clarify: counting questions per training image (0-1) in counting.jsonl (default 0)")
    _set_arg(p, "data set")


def _given(args: argparse.Namespace, *names: str) -> dict:
    """The named options that were given (None = left to the function's default), plus --set."""
    return {**{n: getattr(args, n) for n in names if getattr(args, n) is not None}, **dict(args.options)}


@verb("synth", "write a synthetic data set in the canonical format", _synth_args)
def cmd_synth(args: argparse.Namespace) -> int:
    from vlmtune.registry import SYNTH

    make = SYNTH.get(args.task)
    options = _given(args, "eval_n", "prompt_variant", "counting_share")
    written = call_with_options(make, f"data set {args.task!r}", options, out_dir=args.out, n=args.n,
                                seed=args.seed, image_size=args.image_size)
    if isinstance(written, dict):
        for name, path in written.items():
            print(f"{name}: {path}")
    else:
        print(f"wrote {written}")
    return 0


DEMO_FLAGS = {"task": "demo.task", "out": "demo.out", "fast": "demo.fast",
              "prompt_variant": "demo.options.prompt_variant", "judge": "demo.options.judge",
              "options": lambda pairs: {f"demo.options.{k}": v for k, v in pairs}}
"""Each flag of ``vlmtune demo`` is a shorthand for a recipe key (``config.recipe_from_args``)."""


def _demo_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.config import add_recipe_args

    add_recipe_args(p)
    g = p.add_argument_group("shorthands (each flag sets the recipe key named)")
    g.add_argument("--task", type=_registry_arg("TASKS"), metavar="TASK",
                   help="demo.task: the task whose demo to run (default: clarify, the main job): any task with a "
                        "demo hook, built-in or module:Name / file.py:Name")
    g.add_argument("--out", help="demo.out: output directory (default runs/demo)")
    g.add_argument("--prompt-variant", type=int, choices=[0, 1, 2],
                   help="demo.options.prompt_variant: clarify's system prompt: 0 none (default), 1 short rule, "
                        "2 long rule (ClarifyVLM's variants)")
    g.add_argument("--fast", action="store_true", default=None, help="demo.fast: a one-minute smoke version")
    g.add_argument("--judge", metavar="URL",
                   help="demo.options.judge: clarify: base URL of an OpenAI-compatible judge scoring GRPO's reward "
                        "(default: the offline rule judge; --set judge_model=NAME names the served model)")
    g.add_argument("--set", dest="options", action="append", type=_option, metavar="KEY=VALUE",
                   help="demo.options.KEY: an option of the task's demo (repeatable; the value is read as YAML)")


def demo_tasks() -> list[str]:
    """The built-in tasks that have a demo hook (imports each task)."""
    from vlmtune.eval.tasks import load_task
    from vlmtune.registry import TASKS

    return [n for n in TASKS.names() if callable(getattr(load_task(n), "demo", None))]


@verb("demo", "the main job: a tiny VLM learns when to answer, enumerate or ask (synth, eval, SFT, GRPO); "
              "--task runs another task's demo", _demo_args)
def cmd_demo(args: argparse.Namespace) -> int:
    from vlmtune.config import ConfigError, recipe_from_args
    from vlmtune.eval.tasks import load_task

    cfg = recipe_from_args(args, DEMO_FLAGS).demo
    task = load_task(cfg.task)
    demo = getattr(task, "demo", None)
    if not callable(demo):
        raise ConfigError(f"task {cfg.task!r} has no demo hook (a demo(out, *, fast=False, **options) method); "
                          f"tasks with one: {', '.join(demo_tasks())}")
    call_with_options(demo, f"demo of task {cfg.task!r}", cfg.options, out=Path(cfg.out), fast=cfg.fast)
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.serve import add_serve_args

    add_serve_args(p)


@verb("serve", "OpenAI-compatible chat-completions server over a local model or adapter", _serve_args)
def cmd_serve(args: argparse.Namespace) -> int:
    from vlmtune.serve import cmd_serve as run

    return run(args)


def _eval_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.eval.run import add_eval_args

    add_eval_args(p)


@verb("eval", "evaluate a model (full or adapter): predictions, metrics and an HTML report", _eval_args)
def cmd_eval(args: argparse.Namespace) -> int:
    from vlmtune.eval.run import cmd_eval as run

    return run(args)


def _convert_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.data.converters import add_convert_args

    add_convert_args(p)


@verb("convert", "convert source data (robo2vlm, carepilot, arlarena, abl, aqua, trl, sharegpt, swift, alpaca, "
                 "llamafactory) to canonical Parquet", _convert_args)
def cmd_convert(args: argparse.Namespace) -> int:
    from vlmtune.data.converters import cmd_convert as run

    return run(args)


def _agent_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.tasks.gui_agent.agent import add_agent_args

    add_agent_args(p)


@verb("agent", "sequential GUI-agent step prediction with memory carried from the model's own outputs",
      _agent_args)
def cmd_agent(args: argparse.Namespace) -> int:
    from vlmtune.tasks.gui_agent.agent import cmd_agent as run

    return run(args)


def _merge_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.export import add_merge_args

    add_merge_args(p)


@verb("merge", "fold a LoRA adapter into its base model and save a plain transformers model", _merge_args)
def cmd_merge(args: argparse.Namespace) -> int:
    from vlmtune.export import cmd_merge as run

    return run(args)


def _env_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.envs.commands import add_env_args

    add_env_args(p)


@verb("env", "list the visual environments, or save one's first observation as a PNG", _env_args)
def cmd_env(args: argparse.Namespace) -> int:
    from vlmtune.envs.commands import cmd_env as run

    return run(args)


def _export_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.export import add_export_args

    add_export_args(p)


@verb("export", "a checkpoint (full or adapter; plain, index-sharded or distributed) to a standard "
                "transformers folder with processor, chat template and model card", _export_args)
def cmd_export(args: argparse.Namespace) -> int:
    from vlmtune.export import cmd_export as run

    return run(args)


def _rollout_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.rollout.run import add_rollout_args

    add_rollout_args(p)


@verb("rollout", "play multi-turn episodes in an environment (solver, random or a model) and write "
                 "ARLArena-style trajectories", _rollout_args)
def cmd_rollout(args: argparse.Namespace) -> int:
    from vlmtune.rollout.run import cmd_rollout as run

    return run(args)


def _push_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.push import add_push_args

    add_push_args(p)


@verb("push", "upload an exported folder to a model repository (token from the environment; --dry-run "
              "lists the files and the card)", _push_args)
def cmd_push(args: argparse.Namespace) -> int:
    from vlmtune.push import cmd_push as run

    return run(args)


def _global_args(p: argparse.ArgumentParser, top: bool) -> None:
    # On every verb too (``vlmtune sft --debug ...``); SUPPRESS keeps a verb's default from
    # overwriting a --debug given before the verb.
    p.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="show the full traceback of an error instead of one line")


def build_parser() -> argparse.ArgumentParser:
    from vlmtune import __version__

    parser = argparse.ArgumentParser(prog="vlmtune", description="Post-training for vision-language models.")
    parser.add_argument("--version", action="version", version=f"vlmtune {__version__}")
    _global_args(parser, top=True)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (help_text, add_args, handler) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        _global_args(p, top=False)
        p.set_defaults(func=handler)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Failures the user can fix (a recipe, a model directory, data, the output directory):
    reported in one line naming the file and the cause, exit code 2."""
    from vlmtune.config import ConfigError
    from vlmtune.data.readers import DataError
    from vlmtune.models.loading import ModelLoadError
    from vlmtune.outputs import OutputError
    from vlmtune.push import PushError
    from vlmtune.rewards.registry import RewardError, RewardLoadError

    return (ConfigError, DataError, ModelLoadError, RewardLoadError, RewardError, OutputError, PushError,
            FileNotFoundError, FileExistsError, NotADirectoryError)


def _stops() -> tuple[type[BaseException], ...]:
    """A run that stopped on purpose (judge or generation servers down, non-finite loss): exit
    code 3, the last complete checkpoint kept."""
    from vlmtune.rewards.judge import JudgeAborted
    from vlmtune.rollout.http import GenerationServerError
    from vlmtune.train.run import RunStopped

    return (JudgeAborted, GenerationServerError, RunStopped)


def main(argv: list[str] | None = None) -> int:
    from vlmtune.config import parse_args

    parser = build_parser()
    args = parse_args(parser, argv)
    if getattr(args, "no_progress", False):
        hide_library_progress_bars()
    user_errors, stops = _user_errors(), _stops()
    try:
        return int(args.func(args) or 0)
    except (*user_errors, *stops) as exc:
        if args.debug:
            raise
        kind = "stopped" if isinstance(exc, stops) else "error"
        print(f"vlmtune {args.verb}: {kind}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, user_errors) else 3


if __name__ == "__main__":
    sys.exit(main())
