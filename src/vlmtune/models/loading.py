"""Loading models for training and inference: dtype, 4-bit quantization, PEFT, freezing.

Everything family-specific (where the vision tower lives, which modules LoRA targets)
comes from :mod:`vlmtune.models.families`; this module never tests a model name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmtune.config import ConfigError, FreezeConfig, LoraConfig, ModelConfig, QuantConfig
from vlmtune.models.families import FAMILIES, PARTS, Family, Part, family_for, part_of, token_ids

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """A model path that does not exist or holds no loadable model."""


@dataclass
class Loaded:
    model: Any
    processor: Any
    family: Family | None  # None for text-only models
    is_adapter: bool = False

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def check_model_path(path: str | Path, gguf_file: str | None = None) -> Path | str:
    """Fail early, naming the path and what was looked for. A hub id (``org/name``) that is
    not a local folder is passed on to transformers unless the hub is offline."""
    p = Path(path)
    if not p.exists():
        if _looks_like_hub_id(str(path)) and os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false"):
            return str(path)
        hint = " (HF_HUB_OFFLINE is set, so hub ids are not downloaded)" if _looks_like_hub_id(str(path)) else ""
        raise ModelLoadError(f"model path does not exist: {p}{hint}")
    if gguf_file is not None:
        if not (p / gguf_file).is_file():
            raise ModelLoadError(f"{p}: no GGUF file named {gguf_file!r}")
        return p
    if not ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()):
        raise ModelLoadError(
            f"{p} holds no model: looked for config.json (transformers model) or "
            "adapter_config.json (PEFT adapter)")
    return p


def _read_json(file: Path) -> Any:
    """A JSON file's content, or a ModelLoadError naming the file and what is wrong with it."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{file}: cannot be read ({exc})") from None
    if not text.strip():
        raise ModelLoadError(f"{file}: the file is empty (an interrupted download or copy?)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def check_config(path: Path, trust_remote_code: bool = False) -> None:
    """``config.json`` is a JSON object whose ``model_type`` this transformers knows (or that
    brings its own code, when the user trusts it)."""
    file = path / "config.json"
    config = _read_json(file)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file}: expected a JSON object, got {type(config).__name__}")
    if trust_remote_code and "auto_map" in config:
        return
    from transformers import CONFIG_MAPPING, __version__

    model_type = config.get("model_type")
    if not model_type:
        raise ModelLoadError(f"{file}: no 'model_type' key, so transformers cannot tell which model this is")
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"{file}: unknown model_type {model_type!r} (transformers {__version__} does not "
                             "know it; a newer transformers, or model.trust_remote_code=true for a model that "
                             "ships its own code, may)")


def check_weights(path: Path, stem: str = "model") -> None:
    """The weight files exist and each safetensors file is complete, checked from its header
    (cheap: nothing is loaded) so a truncated or missing file is named before loading."""
    index = path / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{index} names {len(missing)} missing weight file(s): {', '.join(missing[:3])}")
    elif (path / f"{stem}.safetensors").is_file():
        files = [path / f"{stem}.safetensors"]
    elif list(path.glob("*.bin")):
        return  # PyTorch pickles: transformers loads them with weights_only
    else:
        raise ModelLoadError(f"{path}: no weights (looked for {stem}.safetensors, {stem}.safetensors.index.json "
                             "and *.bin)")
    for file in files:
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """A safetensors file's header parses and the data it describes fits in the file."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise ModelLoadError(f"{file}: truncated or not a safetensors file ({size} bytes, no complete header)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ModelLoadError(f"{file}: not a safetensors file (its header is not valid JSON)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelLoadError(f"{file}: truncated: {size} bytes, its header describes {8 + n + end} "
                             "(an interrupted download or copy?)")


def check_model_files(path: Path | str, trust_remote_code: bool = False) -> None:
    """Config and weights of a local model directory, checked before transformers reads them."""
    if not isinstance(path, Path) or not (path / "config.json").is_file():
        return  # a hub id, or an adapter directory (checked where adapters are loaded)
    check_config(path, trust_remote_code)
    check_weights(path)


def _load_processor(loader: Any, path: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained`` with a failure named by the file that caused it."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except Exception as exc:  # noqa: BLE001 - library errors for broken files come in many types
        raise ModelLoadError(f"{_diagnose_processor(Path(path)) or path}: cannot load the tokenizer/processor "
                             f"({_first_line(exc)})") from exc


def _diagnose_processor(path: Path) -> str | None:
    """The first tokenizer/processor file in ``path`` that does not parse, if any."""
    for name in ("tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json",
                 "processor_config.json", "chat_template.json", "tokenizer.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            _read_json(file)
            if name == "tokenizer.json":
                from tokenizers import Tokenizer

                Tokenizer.from_file(str(file))
        except Exception:  # noqa: BLE001 - any failure here names the culprit
            return str(file)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _from_pretrained(loader: Any, path: str, **kwargs: Any) -> Any:
    """Load weights; a library error (shapes that do not match the config, say) is a
    ModelLoadError naming the directory."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load the model ({_first_line(exc)})") from exc


def _is_vlm(config: Any) -> bool:
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def _load_base(cfg: ModelConfig, quant: QuantConfig | None = None):
    """Load a transformers model (VLM or causal LM) plus its processor/tokenizer."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText,
                              AutoProcessor, AutoTokenizer)

    checked = check_model_path(cfg.path, cfg.gguf_file)
    if cfg.gguf_file is None:
        check_model_files(checked, cfg.trust_remote_code)
    path = str(checked)
    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.gguf_file:
        common["gguf_file"] = cfg.gguf_file
    config = _from_pretrained(AutoConfig, path, **common)
    kwargs: dict[str, Any] = dict(common)
    if cfg.dtype != "auto":
        kwargs["dtype"] = _DTYPES[cfg.dtype]
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if _is_vlm(config):
        from vlmtune.models.patch_embed import patch_embed_as_linear

        family = family_for(config)
        if quant is not None:  # the vision tower and projector stay unquantized
            kwargs["quantization_config"] = bnb_config(quant, [*family.vision, *family.projector])
        pixels = pixel_kwargs(cfg, family)
        model = _from_pretrained(AutoModelForImageTextToText, path, **kwargs)
        if cfg.linear_patch_embed:
            patch_embed_as_linear(model)
        processor = _load_processor(AutoProcessor, path, **common)
        if pixels:
            bound_pixels(processor.image_processor, **pixels)
        return model, processor, family
    if quant is not None:
        kwargs["quantization_config"] = bnb_config(quant)
    model = _from_pretrained(AutoModelForCausalLM, path, **kwargs)
    tokenizer = _load_processor(AutoTokenizer, path, **common)
    return model, tokenizer, None


def pixel_kwargs(cfg: ModelConfig, family: Any) -> dict[str, int]:
    """``min_pixels`` / ``max_pixels`` for the processor of a family that takes a pixel budget;
    an error for one that resizes to a fixed size (the bound would silently do nothing)."""
    given = {k: v for k, v in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)) if v is not None}
    if given and not family.pixel_bounds:
        able = ", ".join(name for name, f in FAMILIES.items() if f.pixel_bounds)
        raise ConfigError(f"model.{'/'.join(given)} do not apply to {cfg.path} ({family.name}): its processor resizes "
                          f"images to a fixed size or tiles; the pixel bounds are for {able}")
    return given


def bound_pixels(image_processor: Any, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set a pixel-budget image processor's bounds: its ``size`` holds them as
    ``shortest_edge`` (min pixels) and ``longest_edge`` (max pixels); saved with it."""
    import dataclasses

    new = {k: v for k, v in (("shortest_edge", min_pixels), ("longest_edge", max_pixels)) if v is not None}
    size = image_processor.size
    image_processor.size = dataclasses.replace(size, **new) if dataclasses.is_dataclass(size) else {**size, **new}


def bnb_config(quant: QuantConfig, skip_modules: list[str] | None = None):
    """bitsandbytes settings; modules named in ``skip_modules`` are not quantized."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip_modules)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=_DTYPES[quant.compute_dtype],
        llm_int8_skip_modules=skip_modules,
    )


def resolve_freeze(mode: str, freeze: FreezeConfig) -> dict[Part, bool]:
    """The effective frozen/trainable flag per part, filling the mode's defaults."""
    adapters = mode in ("lora", "qlora")
    default = {"vision": True, "projector": adapters, "language": adapters}
    return {part: (default[part] if getattr(freeze, part) is None else getattr(freeze, part))
            for part in PARTS}


def apply_freeze(model: torch.nn.Module, family: Family, frozen: dict[Part, bool]) -> dict[Part, int]:
    """Set requires_grad per part; returns the trainable parameter count per part."""
    trainable: dict[Part, int] = {part: 0 for part in PARTS}
    for name, param in model.named_parameters():
        part = part_of(family, name)
        param.requires_grad_(not frozen[part])
        if param.requires_grad:
            trainable[part] += param.numel()
    return trainable


def load_for_training(model_cfg: ModelConfig, mode: str, lora: LoraConfig, quant: QuantConfig,
                      freeze: FreezeConfig, gradient_checkpointing: bool = False) -> Loaded:
    """Load the policy as the recipe asks: full / LoRA / QLoRA, with parts frozen."""
    model, processor, family = _load_base(model_cfg, quant if mode == "qlora" else None)
    if family is None:
        raise ModelLoadError(f"{model_cfg.path}: training needs a vision-language model")
    frozen_parts = resolve_freeze(mode, freeze)
    if mode == "full":
        apply_freeze(model, family, frozen_parts)
    else:
        model = _attach_lora(model, family, lora, frozen_parts, quantized=mode == "qlora",
                             gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        enable_checkpointing(model)
        model.config.use_cache = False
        if mode != "full" or frozen_parts["vision"]:
            # Inputs to checkpointed blocks must require grad when the embeddings are frozen.
            model.enable_input_require_grads()
    return Loaded(model=model, processor=processor, family=family, is_adapter=mode != "full")


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant, by the name this transformers uses
    (``activation_checkpointing_enable`` in recent 5.x, where the old name only warns)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _attach_lora(model, family, lora: LoraConfig, frozen: dict[Part, bool], *, quantized: bool,
                 gradient_checkpointing: bool):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if quantized:
        keep_4bit_layout_trainable(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    to_save = list(lora.modules_to_save or [])
    for part in ("vision", "projector"):
        if not frozen[part]:
            to_save += [name for name, _ in family.modules(model, part)]
    if not frozen["language"]:
        raise ValueError("freeze.language=false under LoRA would train the whole language model; "
                         "use train.mode=full instead")
    peft_cfg = PeftLoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules or family.lora_targets,
        modules_to_save=to_save or None, task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def pad_token_id(tokenizer: Any, end_ids: Iterable[int] = ()) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS (what
    ``generate`` falls back to), else the smallest of ``end_ids``, else 0. Padded positions
    are masked, but code that trims trailing padding must not take it for text, hence an
    end token before 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, min(end_ids, default=None)):
        if candidate is not None:
            return int(candidate)
    return 0


def context_length(model: Any) -> int | None:
    """The language model's context length from its config, ``None`` when it names none."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, config):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def end_token_ids(model: Any, tokenizer: Any, family: Family | None = None) -> set[int]:
    """Token ids that end a completion: the generation config's EOS ids, the tokenizer's
    EOS, and the family's end-of-turn and stop tokens (a checkpoint whose generation config
    forgot the end-of-turn token still stops at the end of the turn)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if family is not None:
        ids.update(token_ids(tokenizer, family.end_tokens))
    return ids


def keep_4bit_layout_trainable(model: torch.nn.Module) -> None:
    """bitsandbytes repacks 4-bit weights into a CPU inference layout on the first eval-mode
    forward (on AVX512-BF16 CPUs) and never packs them back, after which training forwards
    fail. A policy that both generates and trains (GRPO) must keep the trainable layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter: Path) -> str:
    """The base model an adapter names in ``adapter_config.json`` (``base_model_name_or_path``).

    peft writes the path the base was loaded from, often relative to where training ran
    (``runs/tiny-qwen2vl``). A relative path is looked up next to the adapter first (an adapter
    shipped together with its base), then from the working directory; a hub id is passed on
    while the hub is online. Otherwise the error says where the name came from and how to
    give the base instead."""
    file = adapter / "adapter_config.json"
    config = _read_json(file)
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise ModelLoadError(f"{adapter} is an adapter without a base model ({file} names none); pass "
                             "--base-model DIR (model.base_model in a recipe)")
    given = Path(base).expanduser()
    candidates = [given] if given.is_absolute() else [adapter / given, given]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    if _looks_like_hub_id(base) and os.environ.get("HF_HUB_OFFLINE", "0") in ("", "0", "false"):
        return base
    looked = " and ".join(str(c.absolute()) for c in candidates)
    raise ModelLoadError(f"adapter {adapter}: its base model {base!r} (base_model_name_or_path in {file}) is not "
                         f"found: looked for {looked}; pass the base with --base-model DIR "
                         "(model.base_model in a recipe)")


def load_for_inference(path: str | Path, base_model: str | None = None, *, dtype: str = "float32",
                       gguf_file: str | None = None, trust_remote_code: bool = False,
                       merge: bool = False) -> Loaded:
    """Load a full model or a PEFT adapter directory (base from adapter_config or ``base_model``)."""
    check_model_path(path, gguf_file)
    if not is_adapter_dir(path):
        cfg = ModelConfig(path=str(path), dtype=dtype, gguf_file=gguf_file,
                          trust_remote_code=trust_remote_code)
        model, processor, family = _load_base(cfg, None)
        model.eval()
        return Loaded(model, processor, family)
    from peft import PeftModel

    base = base_model or adapter_base(Path(path))
    check_weights(Path(path), stem="adapter_model")
    model, processor, family = _load_base(
        ModelConfig(path=str(base), dtype=dtype, trust_remote_code=trust_remote_code), None)
    try:
        model = PeftModel.from_pretrained(model, str(path))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{path}: cannot load the adapter onto {base} ({_first_line(exc)})") from exc
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return Loaded(model, processor, family, is_adapter=not merge)
