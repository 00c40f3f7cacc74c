"""``vlmtune serve`` reads the one recipe schema: a model directory or a recipe first, then
dotted overrides; each flag is a shorthand for its key (nothing is loaded or served here)."""

from __future__ import annotations

import argparse

import pytest

from vlmtune.config import ConfigError, parse_args
from vlmtune.serve.cli import add_serve_args, serve_recipe
from vlmtune.serve.limits import MIB, Limits


def parse(*argv: str):
    p = argparse.ArgumentParser()
    add_serve_args(p)
    return serve_recipe(parse_args(p, list(argv)))


def test_a_directory_first_is_the_model_and_flags_set_their_keys(tmp_path):
    r = parse(str(tmp_path), "serve.port=9001", "--host", "0.0.0.0", "--max-body-mb", "2", "--max-images", "3",
              "--trust-remote-code", "--gguf-file", "m.gguf")
    assert (r.model.path, r.model.gguf_file, r.model.trust_remote_code) == (str(tmp_path), "m.gguf", True)
    assert (r.serve.host, r.serve.port) == ("0.0.0.0", 9001)
    assert r.serve.limits == Limits(max_body_bytes=2 * MIB, max_images=3)
    assert parse(str(tmp_path)).serve.limits == Limits()  # flags not given leave the defaults


def test_a_recipe_first_and_overrides_win_over_flags(tmp_path):
    recipe = tmp_path / "serve.yaml"
    recipe.write_text(f"model: {{path: {tmp_path}}}\nserve: {{port: 7000, max_concurrency: 2, "
                      "limits: {max_new_tokens: 32}}\n")
    r = parse(str(recipe), "--port", "7001", "serve.limits.default_max_tokens=16")
    assert (r.serve.port, r.serve.max_concurrency) == (7001, 2)
    assert (r.serve.limits.max_new_tokens, r.serve.limits.default_max_tokens) == (32, 16)
    assert parse(str(recipe), "serve.port=7002", "--port", "7001").serve.port == 7002


def test_what_cannot_serve_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="needs a model: MODEL_DIR, --model DIR or model.path=DIR"):
        parse()
    with pytest.raises(ConfigError, match="generation.backend must be hf"):
        parse(str(tmp_path), "generation.backend=my_backend.py:Remote")
    with pytest.raises(ConfigError, match="'serve.limits': max_images must be >= 1"):
        parse(str(tmp_path), "--max-images", "0")
    with pytest.raises(ConfigError, match="unknown key 'serve.prot' \\(did you mean 'serve.port'\\?\\)"):
        parse(str(tmp_path), "serve.prot=1")
