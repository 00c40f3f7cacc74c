"""``vlmtune serve MODEL_DIR`` or ``vlmtune serve RECIPE [key=value ...]`` (also ``python -m
vlmtune.serve``): load a model and run uvicorn. Settings are the recipe's ``model`` and
``serve`` sections; each flag is a shorthand for one key (``SERVE_FLAGS``).

Light on imports: ``vlmtune --help`` builds this parser without loading torch or FastAPI.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from vlmtune.serve.limits import MIB, Limits

log = logging.getLogger("vlmtune.serve")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def default_model_name(model_dir: str | Path, gguf_file: str | None = None) -> str:
    if gguf_file:
        return Path(gguf_file).name.removesuffix(".gguf")
    return Path(model_dir).resolve().name


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          base_model: str | None = None, gguf_file: str | None = None, *, model_name: str | None = None,
          dtype: str = "float32", trust_remote_code: bool = False, max_concurrency: int = 1,
          limits: Limits | None = None, threads: int | None = None, log_level: str = "info",
          allow_weight_updates: bool = False) -> None:
    """Load ``model_dir`` (full model, PEFT adapter or GGUF file inside it) and serve it until stopped.

    ``threads`` sets torch's intra-op threads for the process (on a busy CPU, 1 thread per
    concurrent generation avoids oversubscription, which can slow decoding down tenfold)."""
    import uvicorn

    from vlmtune.models.loading import load_for_inference
    from vlmtune.serve.app import create_app

    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    loaded = load_for_inference(model_dir, base_model, dtype=dtype, gguf_file=gguf_file,
                                trust_remote_code=trust_remote_code)
    name = model_name or default_model_name(model_dir, gguf_file)
    app = create_app(loaded, name, api_key=api_key, max_concurrency=max_concurrency, limits=limits,
                     allow_weight_updates=allow_weight_updates)
    if host not in _LOOPBACK and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this address can use the model",
                    host)
    kind = "vision-language model" if loaded.family is not None else "text-only language model"
    bounds = app.stats.limits
    print(f"vlmtune serve: {name} ({kind}) on http://{host}:{port}/v1 "
          f"(API key: {'required' if api_key else 'none'}; max concurrency {max_concurrency}; "
          f"prompt <= {bounds['max_prompt_tokens']} tokens, body <= {bounds['max_body_bytes'] // MIB} MiB; "
          f"weight updates {'on' if allow_weight_updates else 'off'})",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def _mib(value: float) -> dict:
    return {"serve.limits.max_body_bytes": int(value * MIB)}


LIMIT_FLAGS = {"--max-tokens-limit": "max_new_tokens", "--default-max-tokens": "default_max_tokens",
               "--max-prompt-tokens": "max_prompt_tokens", "--max-images": "max_images",
               "--max-image-pixels": "max_image_pixels", "--max-request-pixels": "max_request_pixels"}
"""The integer limits' flags (``--max-body-mb`` is in MiB, the key in bytes)."""

SERVE_FLAGS = {"model_dir": "model.path", "base_model": "model.base_model", "gguf_file": "model.gguf_file",
               "dtype": "model.dtype", "trust_remote_code": "model.trust_remote_code", "host": "serve.host",
               "port": "serve.port", "api_key_env": "serve.api_key_env", "model_name": "serve.model_name",
               "max_concurrency": "serve.max_concurrency", "threads": "serve.threads", "log_level": "serve.log_level",
               "weight_updates": "serve.weight_updates", "max_body_mb": _mib,
               **{flag[2:].replace("-", "_"): f"serve.limits.{name}" for flag, name in LIMIT_FLAGS.items()}}
"""Each flag of ``vlmtune serve`` is a shorthand for a recipe key (``config.recipe_from_args``);
``--api-key`` alone is none (a secret never goes into a recipe)."""


def add_serve_args(p: argparse.ArgumentParser) -> None:
    from vlmtune.config import ServeConfig, add_recipe_args

    add_recipe_args(p)
    p.description = f"{(p.description or 'vlmtune serve').rstrip('.')}. The first argument is a model directory " \
                    "(model.path) or a recipe."
    d, s = Limits(), ServeConfig()
    g = p.add_argument_group("shorthands (each flag sets the recipe key named)")
    g.add_argument("--model", dest="model_dir", help="model.path: model directory (transformers model, PEFT adapter, "
                                                     "or folder holding --gguf-file)")
    g.add_argument("--host", help=f"serve.host: address to bind (default: {s.host}, this machine only)")
    g.add_argument("--port", type=int, help=f"serve.port (default {s.port})")
    g.add_argument("--api-key-env", metavar="VAR",
                   help="serve.api_key_env: require 'Authorization: Bearer KEY', KEY read from this environment "
                        "variable (preferred over --api-key, which other users can see in the process list)")
    g.add_argument("--model-name", help="serve.model_name: model id reported by /v1/models (default: the directory "
                                        "or GGUF file name)")
    g.add_argument("--base-model", help="model.base_model: base model directory for a PEFT adapter without one "
                                        "recorded")
    g.add_argument("--gguf-file", help="model.gguf_file: GGUF file name inside the model directory")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], help="model.dtype (default float32)")
    g.add_argument("--trust-remote-code", action="store_true", default=None, help="model.trust_remote_code")
    g.add_argument("--max-concurrency", type=int,
                   help=f"serve.max_concurrency: generate calls run at once; further requests queue (default "
                        f"{s.max_concurrency}: right for CPU)")
    g.add_argument("--threads", type=int, help="serve.threads: torch CPU threads (default: torch's choice; on a shared "
                                               "or busy CPU, cores / max-concurrency is often much faster)")
    g.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help=f"serve.log_level (default {s.log_level})")
    g.add_argument("--enable-weight-updates", dest="weight_updates", action="store_true", default=None,
                   help="serve.weight_updates: open POST /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM's) "
                        "and /update_weights_from_disk (SGLang's); clients then make the server read adapter and "
                        "model folders from its disk (what a trainer does to keep the policy current)")
    p.add_argument("--api-key", help="require this bearer key (see --api-key-env); never a recipe key")
    lim = p.add_argument_group("limits, serve.limits.* (each breach is a 4xx before the work is done)")
    for flag, name in LIMIT_FLAGS.items():
        field = Limits.model_fields[name]
        lim.add_argument(flag, type=int,
                         help=f"serve.limits.{name}: {field.description.rstrip('.')} (default {field.default})")
    lim.add_argument("--max-body-mb", type=float,
                     help=f"serve.limits.max_body_bytes, in MiB: request body, chunked bodies too; more -> 413 "
                          f"(default {d.max_body_bytes // MIB})")


def serve_recipe(args: argparse.Namespace) -> Any:
    """The recipe ``vlmtune serve`` runs: a first argument that is a directory is the model
    (``model.path``), anything else a recipe; then the flags and overrides."""
    from vlmtune.config import ConfigError, recipe_from_args

    if args.recipe and Path(args.recipe).is_dir():
        if args.model_dir:
            raise ConfigError(f"two models: {args.recipe} and --model {args.model_dir}")
        args.model_dir, args.recipe = args.recipe, None
    recipe = recipe_from_args(args, SERVE_FLAGS)
    if not recipe.model.path:
        raise ConfigError("vlmtune serve needs a model: MODEL_DIR, --model DIR or model.path=DIR")
    if recipe.generation.backend != "hf":
        raise ConfigError(f"vlmtune serve runs the model in this process: generation.backend must be hf, "
                          f"not {recipe.generation.backend!r}")
    return recipe


def cmd_serve(args: argparse.Namespace) -> int:
    recipe = serve_recipe(args)
    cfg = recipe.serve
    api_key = args.api_key
    if cfg.api_key_env:
        api_key = os.environ.get(cfg.api_key_env, "")
        if not api_key:
            raise SystemExit(f"vlmtune serve: --api-key-env names {cfg.api_key_env!r} but that environment "
                             "variable is not set or empty")
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    m = recipe.model
    serve(m.path, host=cfg.host, port=cfg.port, api_key=api_key, base_model=m.base_model, gguf_file=m.gguf_file,
          model_name=cfg.model_name, dtype=m.dtype, trust_remote_code=m.trust_remote_code,
          max_concurrency=cfg.max_concurrency, limits=cfg.limits, threads=cfg.threads, log_level=cfg.log_level,
          allow_weight_updates=cfg.weight_updates)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmtune serve",
                                     description="serve a model over an OpenAI-compatible HTTP API")
    from vlmtune.config import ConfigError, parse_args
    from vlmtune.models.loading import ModelLoadError

    add_serve_args(parser)
    args = parse_args(parser, argv)

    try:
        return cmd_serve(args)
    except (ConfigError, ModelLoadError) as exc:
        print(f"vlmtune serve: error: {exc}", flush=True)
        return 2
