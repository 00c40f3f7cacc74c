"""Environments by name, and users' own by ``file.py:Class`` or ``module:Class``.

Built-ins: ``sokoban`` (:class:`~vlmtune.envs.sokoban.SokobanEnv`) and ``gui_click``
(:class:`~vlmtune.envs.gui_click.GuiClickEnv`). A user's environment is any Gymnasium
environment whose ``step`` takes the model's text; see :mod:`vlmtune.envs.base` for the
optional methods (prompt, expert, random action) the rollout uses when they exist. Names
resolve through the project's one registry helper (:mod:`vlmtune.registry`, whose table
``ENVS`` the recipe schema checks ``env.name`` against).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from vlmtune.registry import ENVS, RegistryError


class EnvLoadError(ValueError):
    """An environment spec or its arguments that cannot be used; the message says why."""


def list_envs() -> list[str]:
    """Built-in environment names, sorted."""
    return ENVS.names()


def load_env_class(spec: str, base_dir: str | Path | None = None) -> Any:
    """The environment class (or factory) named by ``spec``."""
    try:
        obj = ENVS.get(spec, base_dir)
    except RegistryError as exc:
        raise EnvLoadError(str(exc)) from None
    if not callable(obj):
        raise EnvLoadError(f"environment {spec!r}: {type(obj).__name__} is not a class or factory")
    return obj


def make_env(spec: str, kwargs: Mapping[str, Any] | None = None, base_dir: str | Path | None = None) -> Any:
    """Build one environment from its spec and keyword arguments.

    Raises:
        EnvLoadError: unknown spec, or arguments the constructor rejects (the message names
            the spec and the arguments given).
    """
    cls = load_env_class(spec, base_dir)
    kwargs = dict(kwargs or {})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise EnvLoadError(f"environment {spec!r}: cannot build it with {kwargs}: {exc}") from exc


def parse_env_kwargs(items: list[str] | None) -> dict[str, Any]:
    """``["dim_room=[7,7]", "num_boxes=2"]`` -> ``{"dim_room": [7, 7], "num_boxes": 2}``;
    values are read as YAML (numbers, lists, booleans), else kept as text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise EnvLoadError(f"--env-kwargs expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
