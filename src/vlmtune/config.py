"""The recipe schema: one typed tree, defaults in one place, validated before any work.

A recipe is YAML with sections (``model``, ``data``, ``train``, ``lora``, ``quant``,
``freeze``, ``eval``, ``output``, ``grpo``, ``env``, ``generation``, ``agent``, ``serve``,
``demo``, ``rewards``, ``judge``) plus dotted ``key.sub=value`` overrides from the command
line. Every verb reads the same schema; a verb's flags are shorthands for its keys
(:func:`recipe_from_args`). Unknown keys and wrong types fail with the key's dotted path and,
for a typo, the nearest valid key; a name of an extension point (loss, task, backend...) is
checked against its registry with the nearest built-in.
"""

from __future__ import annotations

import argparse
import difflib
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlmtune.registry import (ADVANTAGE_SCALES, ADVANTAGES, ENVS, GENERATORS, JUDGES, KL_ESTIMATORS, LOSSES, TASKS,
                              pydantic_check)

MULTI_TURN_GROUP_SIZE = 8  # episodes per initial state by default (GiGPO's Sokoban setup)


class ConfigError(ValueError):
    """A recipe that cannot run; the message names the key and what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    path: str = Field("", description="Local model directory (transformers format) or hub id.")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="Weights dtype when loading; bf16 mixed precision is train.precision.")
    trust_remote_code: bool = Field(False, description="Off unless you trust the model's code.")
    gguf_file: str | None = Field(None, description="GGUF file inside model.path (text models).")
    attn_implementation: str | None = Field(
        None, description="'sdpa', 'eager' or 'flash_attention_2' (GPU only); None = transformers' choice.")
    base_model: str | None = Field(
        None, description="Base model for an adapter directory given as model.path (eval/serve).")
    min_pixels: int | None = Field(
        None, ge=1, description="Smallest image size in pixels (height x width) after resizing; Qwen2/2.5/3-VL, "
                                "whose processor resizes to a pixel budget. None = the processor's own.")
    max_pixels: int | None = Field(
        None, ge=1, description="Largest image size in pixels after resizing (bounds the image tokens: one per "
                                "28x28 pixels on Qwen2/2.5-VL, 32x32 on Qwen3-VL). None = the processor's own.")
    linear_patch_embed: bool = Field(
        True, description="Run Conv3d patch embeddings over whole patches (Qwen2/2.5/3-VL, GLM-4V) "
                          "as one matrix product: same weights and checkpoints, faster.")


    @model_validator(mode="after")
    def _pixels(self) -> ModelConfig:
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"model.min_pixels ({self.min_pixels}) is above model.max_pixels ({self.max_pixels})")
        return self


class DataSource(_Section):
    """One source of a training mixture."""

    path: str = Field(..., description="A data path, as data.train_path takes one.")
    weight: float = Field(1.0, gt=0, description="Times each row is used per epoch: 2 = twice, 0.5 = a seeded half.")


class DataConfig(_Section):
    train_path: str | list[str | DataSource] = Field("", description="Data file (JSONL/JSON/Parquet; canonical, TRL, ms-swift, ShareGPT or Alpaca rows), LLaMA-Factory folder (DIR, DIR:name), datasets save_to_disk folder (DIR, DIR:split) or cached dataset (hf:NAME[:split]); or a list of them, each a path or {path, weight} (a mixture: weight = times each row is used per epoch).")
    eval_path: str | None = Field(None, description="Held-out file; overrides val_split. vlmtune eval and agent: "
                                                    "the data evaluated.")
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of train held out when no eval_path.")
    on_bad_row: Literal["skip", "error"] = Field("skip", description="Skip and count bad rows, or stop.")
    on_too_long: Literal["drop", "error"] = Field(
        "drop", description="A sample over train.max_length is dropped and counted, or is an error.")
    loss_on: Literal["all_assistant", "last_assistant", "all"] = Field(
        "all_assistant", description="Which tokens carry the loss (image/pad tokens never do).")
    system_prompt: str | None = Field(None, description="Prepended as a system turn when a sample has none.")
    shuffle: bool = Field(True, description="Shuffle the training order each epoch (seeded).")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows (debugging; vlmtune eval: of "
                                                      "data.eval_path).")
    num_proc: int = Field(1, ge=1, description="Processes for the render-check pre-pass (spawned; used from 5,000 rows on).")


class TrainConfig(_Section):
    mode: Literal["full", "lora", "qlora"] = Field("lora", description="What trains: the whole model, LoRA adapters, or LoRA over a 4-bit base.")
    max_steps: int = Field(-1, description="Optimizer steps (1 or more); -1 = run train.epochs.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data when max_steps is -1.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    vision_lr: float | None = Field(None, gt=0, description="Separate lr for the vision tower if trained.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay (not on biases and norms).")
    batch_size: int = Field(1, ge=1, description="Micro-batch size per device.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (token-exact loss).")
    max_length: int = Field(2048, ge=8, description="Longer samples are dropped whole, never cut.")
    packing: bool = Field(
        True, description="Padding-free: a micro-batch's samples run end to end in one row, each attending only "
                          "itself, positions restarting per sample; same loss and gradients as padded rows. "
                          "false = padded rows. A family that cannot pack falls back to padded rows, saying why.")
    max_tokens_per_batch: int | None = Field(
        None, ge=8, description="With packing: a micro-batch's samples are split into rows of at most this many "
                                "tokens, one forward each (bounds activation memory); None = one row per micro-batch.")
    max_grad_norm: float | None = Field(1.0, description="Clip gradients to this norm; None disables.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps (wins over warmup_ratio).")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Warmup as a share of all steps.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="Decay after warmup.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = mixed precision via accelerate.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations (works with LoRA and frozen towers).")
    seed: int = Field(0, description="Seeds init, data order, dropout and sampling.")
    log_every: int = Field(1, ge=1, description="Write metrics every N steps.")
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps; 0 = only at the end.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="With several processes: auto = FSDP when the accelerate config says so "
                            "(recipes/accelerate/fsdp.yaml), else DDP; fsdp = shard parameters, gradients and "
                            "optimizer state over the processes whatever the launcher (torchrun); ddp = a full copy "
                            "per process. One process ignores it (docs/scaling.md).")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A step whose loss, lr or gradient norm is NaN/inf: stop the run (exit 3, the step "
                            "named, the last checkpoint kept), or skip its optimizer step and count it.")

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be 1 or more (or -1 to run train.epochs); 0 steps would train nothing")
        return v


class LoraConfig(_Section):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | str | None = Field(
        None, description="None = the family default (language model attention + MLP).")
    modules_to_save: list[str] | None = Field(None, description="Extra modules trained fully and saved with the adapter.")


class QuantConfig(_Section):
    bits: Literal[4, 8] = Field(4, description="bitsandbytes quantization of the base (qlora mode).")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Matmul dtype of 4-bit layers.")


class FreezeConfig(_Section):
    """Which parts of the VLM stay fixed. ``None`` = the mode's default:
    full mode trains projector and language model with the vision tower frozen; LoRA/QLoRA
    train only the adapters. Unfreezing a part under LoRA trains it fully and saves it with
    the adapter (peft ``modules_to_save``)."""

    vision: bool | None = Field(None, description="Freeze the vision tower (default: yes).")
    projector: bool | None = Field(None, description="Freeze the projector (default: no in full, yes in LoRA).")
    language: bool | None = Field(None, description="Freeze the language model (default: no in full, yes in LoRA).")


def _judge_name(value: str) -> str:
    """``http`` (the recipe's judge section) or an offline judge of ``JUDGES``."""
    return value if value == HTTP_JUDGE else pydantic_check(JUDGES)(value)


HTTP_JUDGE = "http"


class EvalConfig(_Section):
    """Evaluation: the eval loss of ``vlmtune sft``, and ``vlmtune eval`` (model ``model.path``,
    data ``data.eval_path``, generation ``generation.*``)."""

    every: int = Field(0, ge=0, description="sft: eval loss every N steps; 0 = only at the end.")
    batch_size: int = Field(4, ge=1, description="sft: batch size of the eval loss.")
    max_new_tokens: int = Field(64, ge=1, description="vlmtune eval: completion length limit.")
    task: Annotated[str, AfterValidator(pydantic_check(TASKS))] | None = Field(
        None, description=f"vlmtune eval: how responses are scored: {TASKS.describe()}; None = generic.")
    judge: Annotated[str, AfterValidator(_judge_name)] | None = Field(
        None, description=f"vlmtune eval: judge of a task that takes one (clarify): an offline judge "
                          f"({JUDGES.describe()}), '{HTTP_JUDGE}' = the recipe's judge section (an OpenAI-compatible "
                          "endpoint), None = the task's default.")
    max_length: int | None = Field(
        None, ge=2, description="vlmtune eval: token limit of prompt + max_new_tokens; longer rows are skipped and "
                                "listed (None = the model's context).")
    out: str | None = Field(None, description="vlmtune eval: output directory; None = output.dir/eval.")


class AgentConfig(_Section):
    """``vlmtune agent`` (the gui_agent task): step-by-step prediction over a CarePilot CSV
    (``data.eval_path``) with the model ``model.path``."""

    image_dir: str | None = Field(None, description="Folder screenshots are resolved against; None = the CSV's.")
    drop: list[str] = Field(default_factory=list, description="Prompt sections dropped at training (grounding, "
                                                              "short_term, long_term), as given to convert.")
    columns: dict[str, str] = Field(default_factory=dict, description="Column renames {key: name}, as convert's.")
    actions: list[str] | None = Field(None, description="The actions the prompt offers; None = the gold actions "
                                                        "in the data.")
    max_new_tokens: int = Field(256, ge=1, description="Completion length limit per step.")
    out: str | None = Field(None, description="Output directory; None = output.dir/agent.")


MIB = 1024 * 1024


class ServeLimits(_Section):
    """What one request may ask of ``vlmtune serve``; each breach is a 4xx before the work is done."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)

    max_body_bytes: int = Field(32 * MIB, description="Request body size, counted as the bytes arrive (chunked "
                                                      "bodies too); more -> 413.")
    max_prompt_tokens: int | None = Field(None, description="Prompt tokens (image tokens included); None = the "
                                                            "model's context length.")
    max_new_tokens: int = Field(1024, description="Largest max_tokens a request may ask.")
    default_max_tokens: int = Field(256, description="max_tokens when a request gives none (shrunk to fit the "
                                                     "context).")
    max_images: int = Field(8, description="Images in one request.")
    max_image_pixels: int = Field(4096 * 4096, description="Width x height of one image, read from its header "
                                                           "before decoding.")
    max_request_pixels: int = Field(2 * 4096 * 4096, description="Width x height summed over a request's images "
                                                                 "(decoded RGB costs 3 bytes a pixel).")

    @model_validator(mode="after")
    def _positive(self) -> ServeLimits:
        for name, value in self:
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (got {value})")
        return self


class ServeConfig(_Section):
    """``vlmtune serve``: an OpenAI-compatible server over ``model.path`` (``model.base_model``,
    ``model.gguf_file``, ``model.dtype``). The API key itself is never a recipe key
    (``--api-key`` or, better, ``serve.api_key_env``)."""

    host: str = Field("127.0.0.1", description="Address to bind (127.0.0.1: this machine only).")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    api_key_env: str | None = Field(None, description="Require 'Authorization: Bearer KEY', KEY read from this "
                                                      "environment variable.")
    model_name: str | None = Field(None, description="Model id reported by /v1/models; None = the directory or "
                                                     "GGUF file name.")
    max_concurrency: int = Field(1, ge=1, description="Generate calls run at once; further requests queue.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's choice (on a busy CPU, "
                                                        "cores / max_concurrency is often much faster).")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="Log level.")
    weight_updates: bool = Field(
        False, description="Open POST /v1/load_lora_adapter, /v1/unload_lora_adapter (vLLM's) and "
                           "/update_weights_from_disk (SGLang's): clients make the server read adapter and model "
                           "folders from its disk (a trainer keeping the policy current; docs/serving.md).")
    limits: ServeLimits = Field(default_factory=ServeLimits)


class DemoConfig(_Section):
    """``vlmtune demo``: a task's demo hook, ``demo(out, *, fast=False, **options)``."""

    task: Annotated[str, AfterValidator(pydantic_check(TASKS))] = Field(
        "clarify", description="The task whose demo runs (any task with a demo hook).")
    out: str = Field("runs/demo", description="Output directory.")
    fast: bool = Field(False, description="A one-minute smoke version.")
    options: dict[str, Any] = Field(default_factory=dict, description="The demo's own keyword options (clarify: "
                                                                      "prompt_variant).")


Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "aim", "clearml", "dvclive", "swanlab"]


class OutputConfig(_Section):
    dir: str = Field("runs/default", description="Run directory.")
    report_to: list[Tracker] = Field(
        default_factory=lambda: ["tensorboard"],
        description="Where metrics go besides metrics.jsonl: tensorboard (tb/ in the run), or accelerate's "
                    "trackers (wandb offline in the run dir unless WANDB_MODE is set, mlflow in the run dir "
                    "unless MLFLOW_TRACKING_URI is set, trackio, ...); [] = metrics.jsonl only.")
    project: str = Field("vlmtune", description="Project name given to the trackers of output.report_to.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if v is None or v in ("none", "null"):
            return []
        return [v] if isinstance(v, str) else v
    overwrite: bool = Field(
        False, description="Replace an earlier run in output.dir (its metrics, TensorBoard, checkpoints, final/, "
                           "summary); without it, or resume_from, such a directory is refused.")


class GrpoConfig(_Section):
    num_generations: int = Field(4, ge=2, description="Completions per prompt (G).")
    loss: Annotated[str, AfterValidator(pydantic_check(LOSSES))] = Field(
        "grpo", description=f"Policy-loss variant: {LOSSES.describe()} (see docs/grpo.md).")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 loads no reference.")
    kl: Annotated[str, AfterValidator(pydantic_check(KL_ESTIMATORS))] = Field(
        "k3", description=f"KL estimator: {KL_ESTIMATORS.describe()}.")
    eps_low: float = Field(0.2, ge=0, description="Lower clip: ratio >= 1 - eps_low.")
    eps_high: float | None = Field(None, ge=0, description="None = eps_low (symmetric clip).")
    dual_clip: float | None = Field(None, gt=1, description="Dual-clip constant c (e.g. 3.0).")
    scale: Annotated[str, AfterValidator(pydantic_check(ADVANTAGE_SCALES))] = Field(
        "group", description=f"What centred rewards are divided by: {ADVANTAGE_SCALES.describe()} (group std, "
                             "batch std, none = Dr. GRPO).")
    advantage: Annotated[str, AfterValidator(pydantic_check(ADVANTAGES))] = Field(
        "grpo", description="Advantage estimator: grpo (group-relative; with env: per episode, return = task "
                            "score) or gigpo (with env: episode-level + omega x step-level over anchor states).")
    gamma: float = Field(0.95, ge=0, le=1, description="gigpo: discount of the step-level returns.")
    omega: float = Field(1.0, ge=0, description="gigpo: weight of the step-level advantage.")
    gigpo_norm: Literal["mean", "mean_std"] = Field(
        "mean_std", description="gigpo: centre both levels by their group mean (mean) and also divide by the "
                                "group std (mean_std).")
    adv_eps: float = Field(1e-4, gt=0, description="Added to the std before dividing.")
    num_iterations: int = Field(1, ge=1, description="Policy updates per generation batch (mu).")
    max_new_tokens: int = Field(64, ge=1, description="Completion length limit.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature (log-probs use it too).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(0, ge=0, description="Sample among the k most probable tokens; 0 = all (the distribution the "
                                            "loss's log-probs assume, and TRL's default).")
    prompts_per_step: int = Field(2, ge=1, description="Prompts sampled per generation batch.")
    shared_prefix: bool = Field(True, description="Run each prompt and its images once per group, not G times.")
    drop_zero_spread: bool = Field(False, description="Dynamic sampling: drop groups with equal rewards.")
    max_refill: int = Field(0, ge=0, description="Extra generation rounds to refill dropped groups.")
    samples_to_log: int = Field(4, ge=0, description="Completions logged per step with their rewards.")


class EnvConfig(_Section):
    """Multi-turn RL: with ``name`` set, ``vlmtune grpo`` plays episodes instead of answering
    prompts. Each step plays ``grpo.prompts_per_step`` initial states ``grpo.num_generations``
    times each (default 8 then, GiGPO's group size); every turn's completion is a training
    segment with its own advantage (``grpo.advantage``)."""

    name: Annotated[str, AfterValidator(pydantic_check(ENVS))] | None = Field(
        None, description=f"Environment: {ENVS.describe()}; None = single-turn prompts from data.train_path.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Environment constructor arguments.")
    max_turns: int | None = Field(None, ge=1, description="Turns per episode; None = the environment's max_steps.")
    history: int = Field(0, ge=0, description="Past (text observation, action) pairs in each prompt.")
    seed: int = Field(0, ge=0, description="Initial states of training are seeds seed, seed+1, ... (one per group).")
    num_states: int | None = Field(
        None, ge=1, description="Cycle through this many initial states; None = a fresh one for every group.")


class GenerationConfig(_Section):
    """How completions are generated, by every verb that generates (grpo, eval, agent)."""

    backend: Annotated[str, AfterValidator(pydantic_check(GENERATORS))] = Field(
        "hf", description=f"Generation backend: {GENERATORS.describe()} (docs/extending.md).")
    batch_size: int | None = Field(
        None, ge=1, description="Prompts per generation call; None = the verb's default: grpo.prompts_per_step for "
                                "grpo (each prompt and its images run once, its G completions decoded with all "
                                "the step's others), 64 for grpo with env.name (a turn of every live "
                                "episode), 8 for eval and agent.")
    options: dict[str, Any] = Field(default_factory=dict, description="The backend's own keyword arguments.")


class RewardSpec(_Section):
    fn: str = Field(..., description="'module:function' or 'path/to/file.py:function'.")
    weight: float = Field(1.0, description="Weight in the summed reward.")
    name: str | None = Field(None, description="Name in metrics; default the function name.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the function.")


class JudgeConfig(_Section):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible endpoint.")
    model: str = Field("default", description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at most.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    retries: int = Field(3, ge=0, description="Retries on timeouts, connection errors, 5xx and 429.")
    backoff_s: float = Field(0.5, ge=0, description="First backoff; doubles per retry.")
    cache_path: str | None = Field(None, description="SQLite cache file; None = no cache.")
    temperature: float = Field(0.0, ge=0, description="Judge sampling; 0 keeps rewards stable.")
    max_tokens: int = Field(256, ge=1, description="Judge reply length.")
    max_reply_bytes: int = Field(
        1 << 20, ge=1024, description="Replies larger than this (bytes) are not read past it and count as "
                                      "judge failures of kind too_large.")
    on_failure: Literal["none", "default", "abort"] = Field("none", description="A failed judgement: no reward, default_score, or stop the run.")
    default_score: float = Field(0.0, description="Reward used by on_failure=default.")
    abort_after: int = Field(20, ge=1, description="Consecutive failures before 'abort' stops the run.")


class Recipe(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    freeze: FreezeConfig = Field(default_factory=FreezeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    rewards: list[RewardSpec] = Field(default_factory=list, description="GRPO rewards: [{fn, weight, name, kwargs}].")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    resume_from: str | None = Field(None, description="'auto' (latest checkpoint in output.dir) or a path.")

    @field_validator("resume_from")
    @classmethod
    def _resume(cls, v: str | None) -> str | None:
        return None if v in ("", "none", "null") else v

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.grpo.eps_high is None:
            self.grpo.eps_high = self.grpo.eps_low
        if self.resume_from is not None and self.output.overwrite:
            raise ValueError("resume_from and output.overwrite=true contradict each other: overwriting deletes "
                             "the checkpoints a resume starts from")
        if self.env.name and "num_generations" not in self.grpo.model_fields_set:
            self.grpo.num_generations = MULTI_TURN_GROUP_SIZE
        return self


# --------------------------------------------------------------------------- loading


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.lr=1e-4'`` -> (['train', 'lr'], 0.0001); values are parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip().split("."), value


def _set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_valid_keys(ann, dotted + "."))
    return keys


def _explain(err: ValidationError) -> str:
    valid = _valid_keys(Recipe)
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(loc, valid, n=1, cutoff=0.6)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            lines.append(f"unknown key '{loc}'{hint}")
        elif e["type"] == "value_error":  # our own validators: the message says what to do
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"'{loc}': {msg} (got {e.get('input')!r})" if loc else msg)
        else:
            lines.append(f"'{loc}': {e['msg']} (got {e.get('input')!r})")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def build_recipe(tree: dict[str, Any]) -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


PACKAGE = Path(__file__).parent


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped inside the package, by name: ``recipes/NAME.yaml`` and each task's
    ``tasks/<task>/recipes/NAME.yaml`` (package data, so they exist wherever vlmtune is installed)."""
    files = [*sorted(PACKAGE.glob("recipes/*.yaml")), *sorted(PACKAGE.glob("tasks/*/recipes/*.yaml"))]
    return {f.stem: f for f in files}


def find_recipe(path: str | Path) -> Path:
    """A recipe file: the path itself when it exists, else a shipped recipe of that name
    (``sft_lora`` or ``sft_lora.yaml``)."""
    given = Path(path)
    if given.is_file():
        return given
    known = builtin_recipes()
    if given.parent == Path(".") and given.name.removesuffix(".yaml").removesuffix(".yml") in known:
        return known[given.name.removesuffix(".yaml").removesuffix(".yml")]
    raise ConfigError(f"recipe not found: {path} (not a file; shipped recipes: {', '.join(sorted(known)) or 'none'})")


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                values: dict[str, Any] | None = None) -> Recipe:
    """Read a YAML recipe (a file, or a shipped recipe by name; or start from defaults), set
    ``values`` (dotted key -> Python value: a verb's flags), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = find_recipe(path)
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
    for key, value in (values or {}).items():
        _set_dotted(tree, key.split("."), value)
    for item in overrides:
        keys, value = parse_override(item)
        _set_dotted(tree, keys, value)
    return build_recipe(tree)


Shorthand = str | Callable[[Any], dict[str, Any]]
"""What a verb's flag stands for: a dotted recipe key, or a function of the flag's value
returning ``{dotted key: value}`` (a flag in other units, or setting several keys)."""


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The arguments every recipe-reading verb takes: RECIPE, then ``key.sub=value`` overrides."""
    p.add_argument("recipe", nargs="?", help="YAML recipe file, or a shipped recipe's name (e.g. sft_lora); "
                                             "optional if every key is given as an override or flag")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4 model.path=DIR")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, but ``key=value`` overrides may also follow options (argparse stops
    filling positionals at the first option)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def recipe_from_args(args: argparse.Namespace, shorthands: dict[str, Shorthand] | None = None) -> Recipe:
    """The recipe a verb runs: ``args.recipe`` (a first argument holding ``=`` is an override),
    then each flag given (not None) set at its key (``shorthands``: flag dest -> key), then the
    ``key=value`` overrides, which win."""
    path, overrides = getattr(args, "recipe", None), list(getattr(args, "overrides", []) or [])
    if path and "=" in str(path) and not str(path).endswith((".yaml", ".yml")):
        path, overrides = None, [path, *overrides]
    values: dict[str, Any] = {}
    for dest, key in (shorthands or {}).items():
        given = getattr(args, dest, None)
        if given is not None:
            values.update(key(given) if callable(key) else {key: given})
    return load_recipe(path, overrides, values)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved recipe (every default made explicit) next to the run."""
    Path(path).write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def recipe_reference() -> str:
    """Markdown table of every recipe key with its type, default and description
    (``docs/recipes.md`` is generated from this; a test keeps the two in step)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            kind = _type_name(ann).replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | {kind} | `{json_default(default)}` | {field.description or ''} |")

    walk(Recipe, "")
    return "\n".join(lines) + "\n"


def _type_name(ann: Any) -> str:
    import typing

    origin = typing.get_origin(ann)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(ann))
    if origin is Annotated:  # a checked name (e.g. a registry's): its base type
        return _type_name(typing.get_args(ann)[0])
    if origin is list:  # list[...] names its items (list[a | b])
        return f"list[{_type_name(typing.get_args(ann)[0])}]"
    if ann is type(None):
        return "None"
    if typing.get_args(ann) and origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


def json_default(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


if __name__ == "__main__":
    print(recipe_reference(), end="")
