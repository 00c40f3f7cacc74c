"""The recipe schema: defaults, overrides, errors that name the key, and the reference doc."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmtune.config import ConfigError, load_recipe, parse_override, recipe_reference, save_recipe


def test_minimal_recipe_has_every_default(tmp_path):
    r = load_recipe(None, ["model.path=m", "data.train_path=d.jsonl", "output.dir=o"])
    assert r.train.mode == "lora" and r.train.lr == 1e-4 and r.grpo.eps_high == r.grpo.eps_low == 0.2
    save_recipe(r, tmp_path / "config.yaml")
    assert load_recipe(tmp_path / "config.yaml") == r  # the saved recipe resolves to the same


def test_overrides_parse_yaml_values():
    assert load_recipe(None, ["train.lr=3e-4"]).train.lr == 3e-4  # YAML 1.1 reads 3e-4 as text; the schema converts
    assert parse_override("freeze.vision=false") == (["freeze", "vision"], False)
    assert parse_override("lora.target_modules=[q_proj, v_proj]") == (["lora", "target_modules"], ["q_proj", "v_proj"])
    r = load_recipe(None, ["rewards=[{fn: exact_match, weight: 2}]"])
    assert r.rewards[0].fn == "exact_match" and r.rewards[0].weight == 2


@pytest.mark.parametrize("override,message", [
    ("trian.lr=1", "unknown key 'trian' (did you mean 'train'?)"),
    ("train.lrr=1", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("train.lr=fast", "'train.lr'"),
    ("train.mode=half", "'full', 'lora' or 'qlora'"),
    ("train.batch_size=0", "'train.batch_size'"),
    ("grpo.num_generations=1", "'grpo.num_generations'"),
    ("nokey", "not of the form key.sub=value"),
    ("train.max_steps=0", "'train.max_steps': must be 1 or more (or -1 to run train.epochs)"),
    ("train.max_steps=-3", "'train.max_steps': must be 1 or more"),
    ("train.on_nonfinite=ignore", "'stop' or 'skip'"),
    # names of extension points are checked against their registry, nearest built-in named
    ("grpo.scale=grop", "'grpo.scale': unknown advantage scale 'grop' (did you mean 'group'?)"),
    ("grpo.loss=dapoo", "unknown loss 'dapoo' (did you mean 'dapo'?)"),
    ("grpo.kl=k2", "unknown KL estimator 'k2'"),
    ("generation.backend=hff", "unknown generation backend 'hff' (did you mean 'hf'?)"),
    ("eval.judge=rul", "unknown judge 'rul' (did you mean 'rule'?)"),
    ("demo.task=clarfy", "unknown task 'clarfy' (did you mean 'clarify'?)"),
    ("generation.batch_size=0", "'generation.batch_size'"),
])
def test_bad_recipes_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert message in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(tmp_path / "broken.yaml")


def test_reference_doc_is_current():
    doc = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text()
    assert recipe_reference() in doc, "regenerate: python -m vlmtune.config > docs/recipes.md (keep the header)"


def test_resume_and_overwrite_contradict():
    with pytest.raises(ConfigError, match="resume_from and output.overwrite=true contradict") as err:
        load_recipe(None, ["resume_from=auto", "output.overwrite=true"])
    assert "\n  resume_from and" in str(err.value)  # the validator's own words, no pydantic prefix


def test_plugin_names_and_http_judge_pass_the_schema():
    r = load_recipe(None, ["grpo.scale=my_scales.py:mad", "generation.backend=my_backend.py:Remote",
                           "eval.judge=http", "generation.options={base_url: 'http://127.0.0.1:1'}"])
    assert (r.grpo.scale, r.generation.backend, r.eval.judge) == ("my_scales.py:mad", "my_backend.py:Remote", "http")
    assert r.generation.options == {"base_url": "http://127.0.0.1:1"}


def test_flags_are_shorthands_and_overrides_win(tmp_path):
    import argparse

    from vlmtune.config import recipe_from_args

    (tmp_path / "r.yaml").write_text("eval: {max_new_tokens: 10, task: mcq}\n")
    args = argparse.Namespace(recipe=str(tmp_path / "r.yaml"), overrides=["eval.max_new_tokens=12"],
                              max_new_tokens=11, task="generic", out=None)
    r = recipe_from_args(args, {"max_new_tokens": "eval.max_new_tokens", "task": "eval.task", "out": "eval.out",
                                "missing": "eval.judge"})
    assert (r.eval.max_new_tokens, r.eval.task, r.eval.out, r.eval.judge) == (12, "generic", None, None)
    # a first argument holding '=' is an override, not a recipe; flag values are not read as YAML
    args = argparse.Namespace(recipe="eval.task=mcq", overrides=[], system_prompt="yes")
    r = recipe_from_args(args, {"system_prompt": "data.system_prompt"})
    assert (r.eval.task, r.data.system_prompt) == ("mcq", "yes")
