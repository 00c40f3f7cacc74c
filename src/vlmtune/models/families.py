"""Model-family facts: the ONE place where what differs between VLM families lives.

Everything generic code needs to know about a family (where the vision tower, the
projector and the language model live; which linear layers LoRA may target; which
text tokens stand for an image; which token ends a turn; which extra processor outputs
the forward pass needs, and which of them run along the sequence) is a field of
:class:`Family`. Code elsewhere asks ``family_for(model)`` and reads fields; it never
tests model names. What reads which field:

=====================  ==========================================================
field                  read by
=====================  ==========================================================
vision / projector /   freezing and optimizer groups (:func:`part_of`), LoRA
language               ``modules_to_save``, quantization skips, the vision warm-up
                       (:meth:`Family.module`)
lora_targets           LoRA's ``target_modules`` default
image_token,           the loss mask (:attr:`Family.image_tokens` never carry a
image_pad_token,       label), the tiny-model self-check
image_wrap_tokens
end_of_turn,           when generation stops (:func:`vlmtune.models.loading.end_token_ids`),
stop_tokens            where MCQ answer extraction cuts a reply
extra_inputs,          collation: the per-token ones are padded along the sequence
token_inputs           (:attr:`Family.token_keys`); a GRPO group extends them over
                       its completions
position_style         GRPO's shared-prefix positions and SFT's packed positions
                       (mRoPE or 1-D)
packing_blocker        whether SFT packs samples padding-free or pads rows
=====================  ==========================================================

Parameter names are those of the model loaded with
``transformers.AutoModelForImageTextToText`` in transformers 5.x (checked against
5.23 by building the tiny models of :mod:`vlmtune.models.tiny`). For example
Qwen2-VL::

    model.visual.patch_embed.proj.weight               vision
    model.visual.blocks.0.attn.qkv.weight              vision
    model.visual.merger.mlp.0.weight                   projector  (inside model.visual!)
    model.language_model.layers.0.self_attn.q_proj...  language
    lm_head.weight                                     language

Classification rule (:func:`part_of`): a name belongs to the part owning the
*longest* prefix that matches it on a dot boundary. Projector prefixes are always more
specific than the vision prefix that contains them (``model.visual.merger`` vs
``model.visual``), so the projector wins. Wrapper prefixes added by PEFT
(``base_model.model.``), DDP (``module.``) and ``torch.compile`` (``_orig_mod.``) are
stripped first, so LoRA parameters (``...q_proj.lora_A.default.weight``) classify too.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

Part = Literal["vision", "projector", "language"]
PARTS: tuple[Part, ...] = ("vision", "projector", "language")

__all__ = [
    "Family",
    "FAMILIES",
    "Part",
    "PARTS",
    "TEXT_KEYS",
    "family_for",
    "find_family",
    "get_family",
    "list_families",
    "part_of",
    "split_parameters",
    "token_ids",
]

TEXT_KEYS: tuple[str, ...] = ("input_ids", "attention_mask", "labels")
"""Per-token tensors every family has (``labels`` is ours, made by the renderer)."""


@dataclass(frozen=True)
class Family:
    """Facts about one VLM family (see module docstring for the prefix rule)."""

    name: str
    """Our key, e.g. ``"qwen2_vl"``."""
    model_types: tuple[str, ...]
    """``config.model_type`` values that map to this family."""
    model_class: str
    """transformers class that ``AutoModelForImageTextToText`` loads."""
    vision: tuple[str, ...]
    """Dotted parameter-name prefixes of the vision tower."""
    projector: tuple[str, ...]
    """Prefixes of the vision->text projector (merger / connector)."""
    language: tuple[str, ...]
    """Prefixes of the language model, including ``lm_head``."""
    lora_targets: str
    """Regex for peft ``target_modules``: language-model attention + MLP linears only."""
    image_token: str
    """Placeholder token the chat template writes for one image (= ``processor.image_token``)."""
    image_pad_token: str
    """Token repeated once per image feature after the processor expands the placeholder
    (its id is ``config.image_token_id``). Equal to ``image_token`` except for Gemma3."""
    image_wrap_tokens: tuple[str, ...]
    """Other tokens the processor writes around/inside an image span (never truncate
    through them, never train on them)."""
    end_of_turn: str
    """Token that closes an assistant turn in the chat template; ``generate`` stops on it
    and MCQ answer extraction cuts a reply at it."""
    extra_inputs: tuple[str, ...]
    """Processor outputs besides ``input_ids``/``attention_mask``/``pixel_values`` that
    forward and generate need; collation must keep them."""
    position_style: Literal["1d", "mrope"]
    """``mrope``: 3-D multimodal RoPE; positions come from ``model.model.get_rope_index``."""
    template_adds_bos: bool
    """The chat template itself writes the BOS token. Tokenize rendered text with
    ``add_special_tokens=False`` when the text starts with BOS (transformers' own rule in
    ``ProcessorMixin.apply_chat_template``), otherwise with the default."""
    token_inputs: tuple[str, ...] = ()
    """The per-token ones among ``extra_inputs`` (shape (1, T) like ``input_ids``, 0 at text
    tokens): collation pads them along the sequence, a GRPO group extends them with 0 over
    its completions. The rest are per-image tensors, concatenated across samples."""
    stop_tokens: tuple[str, ...] = ()
    """Tokens besides ``end_of_turn`` that end a generation (the family's own
    ``generation_config.eos_token_id`` list, e.g. Qwen's ``<|endoftext|>``)."""
    pixel_bounds: bool = False
    """The image processor resizes each image to a pixel budget and takes ``min_pixels`` /
    ``max_pixels`` (Qwen-VL's dynamic resolution): the recipe's ``model.min_pixels`` /
    ``model.max_pixels`` go to it. Families that resize to a fixed size or fixed tiles
    (LLaVA, Gemma3, InternVL, Idefics3) have no such bound."""
    packing_blocker: str = ""
    """Why padding-free packing (:mod:`vlmtune.batching.packing`) would give this family
    wrong attention, so SFT pads its rows instead (and says so); empty: it packs."""
    notes: str = ""

    def __post_init__(self) -> None:
        stray = set(self.token_inputs) - set(self.extra_inputs)
        if stray:
            raise ValueError(f"family {self.name!r}: token_inputs {sorted(stray)} are not in extra_inputs")

    @property
    def prefixes(self) -> dict[Part, tuple[str, ...]]:
        return {"vision": self.vision, "projector": self.projector, "language": self.language}

    @property
    def token_keys(self) -> tuple[str, ...]:
        """Every per-token tensor of a rendered sample: what collation pads along the sequence."""
        return TEXT_KEYS + self.token_inputs

    @property
    def end_tokens(self) -> tuple[str, ...]:
        """Tokens that end a generation: ``end_of_turn`` first, then ``stop_tokens``."""
        return (self.end_of_turn, *(t for t in self.stop_tokens if t != self.end_of_turn))

    @property
    def image_tokens(self) -> tuple[str, ...]:
        """Every token the processor writes for an image (placeholder, the repeated feature
        token, wrappers): none of them is ever a training target."""
        return tuple(dict.fromkeys((self.image_token, self.image_pad_token, *self.image_wrap_tokens)))

    def modules(self, model: nn.Module, part: Part) -> list[tuple[str, nn.Module]]:
        """The modules of ``model`` at this family's ``part`` prefixes, as (name, module) in
        prefix order; names are given without PEFT/DDP/compile wrapper prefixes."""
        found = {_strip_wrappers(name): mod for name, mod in model.named_modules()}
        return [(p, found[p]) for p in self.prefixes[part] if p in found]

    def module(self, model: nn.Module, part: Part) -> nn.Module:
        """The one module holding ``part`` (e.g. the vision tower); an error naming the
        prefixes when the model has none or several."""
        mods = self.modules(model, part)
        if len(mods) != 1:
            raise ValueError(f"{type(model).__name__}: expected one {part} module at {self.prefixes[part]} "
                             f"for family {self.name!r}, found {[n for n, _ in mods]}")
        return mods[0][1]


# LoRA regex: peft fullmatches a str target against each module's full name.
def _lora_regex(lm_prefix: str) -> str:
    lm = re.escape(lm_prefix)
    return (
        rf"^(?:.*\.)?{lm}\.layers\.\d+\."
        r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))$"
    )


_QWEN_MM_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw")

_QWEN2_VL = Family(
    name="qwen2_vl",
    model_types=("qwen2_vl",),
    model_class="Qwen2VLForConditionalGeneration",
    vision=("model.visual",),
    projector=("model.visual.merger",),
    language=("model.language_model", "lm_head"),
    lora_targets=_lora_regex("model.language_model"),
    image_token="<|image_pad|>",
    image_pad_token="<|image_pad|>",
    image_wrap_tokens=("<|vision_start|>", "<|vision_end|>"),
    end_of_turn="<|im_end|>",
    extra_inputs=_QWEN_MM_INPUTS,
    token_inputs=("mm_token_type_ids",),
    stop_tokens=("<|endoftext|>",),
    position_style="mrope",
    template_adds_bos=False,
    pixel_bounds=True,
    notes="Default system prompt inserted by the template when none is given.",
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        _QWEN2_VL,
        replace(
            _QWEN2_VL,
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            model_class="Qwen2_5_VLForConditionalGeneration",
            extra_inputs=_QWEN_MM_INPUTS + ("second_per_grid_ts",),
            notes="Vision MLP uses gate/up/down_proj names too: LoRA regex is anchored on the language model.",
        ),
        replace(
            _QWEN2_VL,
            name="qwen3_vl",
            model_types=("qwen3_vl",),
            model_class="Qwen3VLForConditionalGeneration",
            projector=("model.visual.merger", "model.visual.deepstack_merger_list"),
            notes="Patch 16, interleaved mRoPE, DeepStack mergers (counted as projector). No default system prompt.",
        ),
        Family(
            name="internvl",
            model_types=("internvl",),
            model_class="InternVLForConditionalGeneration",
            vision=("model.vision_tower",),
            projector=("model.multi_modal_projector",),
            language=("model.language_model", "lm_head"),
            lora_targets=_lora_regex("model.language_model"),
            image_token="<IMG_CONTEXT>",
            image_pad_token="<IMG_CONTEXT>",
            image_wrap_tokens=("<img>", "</img>"),
            end_of_turn="<|im_end|>",
            extra_inputs=(),
            stop_tokens=("<|endoftext|>",),
            position_style="1d",
            template_adds_bos=False,
            notes="The transformers-native (-hf) InternVL format; remote-code 'internvl_chat' checkpoints are not covered.",
        ),
        Family(
            name="idefics3",
            model_types=("idefics3", "smolvlm"),
            model_class="Idefics3ForConditionalGeneration",
            vision=("model.vision_model",),
            projector=("model.connector",),
            language=("model.text_model", "lm_head"),
            lora_targets=_lora_regex("model.text_model"),
            image_token="<image>",
            image_pad_token="<image>",
            image_wrap_tokens=("<fake_token_around_image>", "<global-img>")
            + tuple(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
            end_of_turn="<end_of_utterance>",
            extra_inputs=("pixel_attention_mask",),
            position_style="1d",
            template_adds_bos=True,
            notes="SmolVLM (v1, model_type idefics3) and SmolVLM2 (model_type smolvlm) share the module layout. "
            "pixel_values are 5-D (batch, images, C, H, W).",
        ),
        Family(
            name="llava",
            model_types=("llava",),
            model_class="LlavaForConditionalGeneration",
            vision=("model.vision_tower",),
            projector=("model.multi_modal_projector",),
            language=("model.language_model", "lm_head"),
            lora_targets=_lora_regex("model.language_model"),
            image_token="<image>",
            image_pad_token="<image>",
            image_wrap_tokens=(),
            end_of_turn="</s>",
            extra_inputs=(),
            position_style="1d",
            template_adds_bos=False,
            notes="LLaVA-1.5 style. transformers loads llava tokenizers as TokenizersBackend (tokenizer.json as is).",
        ),
        Family(
            name="gemma3",
            model_types=("gemma3",),
            model_class="Gemma3ForConditionalGeneration",
            vision=("model.vision_tower",),
            projector=("model.multi_modal_projector",),
            language=("model.language_model", "lm_head"),
            lora_targets=_lora_regex("model.language_model"),
            image_token="<start_of_image>",
            image_pad_token="<image_soft_token>",
            image_wrap_tokens=("<start_of_image>", "<end_of_image>"),
            end_of_turn="<end_of_turn>",
            extra_inputs=("token_type_ids",),
            token_inputs=("token_type_ids",),
            stop_tokens=("<eos>",),
            position_style="1d",
            template_adds_bos=True,
            packing_blocker="transformers (5.24) maps a packed row's token indices to per-sample positions before "
            "Gemma3's bidirectional image-block mask reads them, so image blocks of different samples would mix",
            notes="token_type_ids (1 at image tokens) make attention bidirectional inside an image. "
            "Word embeddings are tied (no lm_head parameter).",
        ),
    ]
}

_WRAPPERS = ("base_model.model.", "module.", "_orig_mod.")


def list_families() -> list[str]:
    """Names of the known families, sorted."""
    return sorted(FAMILIES)


def get_family(name: str) -> Family:
    """The family called ``name`` (our key) or whose model_types contain ``name``."""
    if name in FAMILIES:
        return FAMILIES[name]
    for fam in FAMILIES.values():
        if name in fam.model_types:
            return fam
    raise KeyError(f"unknown model family {name!r}; known families: {', '.join(list_families())}")


def _model_type_of(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        cfg = os.path.join(path, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as fh:
                return str(json.load(fh).get("model_type", ""))
        return path
    if isinstance(obj, dict):
        return str(obj.get("model_type", ""))
    config = getattr(obj, "config", obj)
    # a peft model wraps the base model; its .config is the base config already
    mt = getattr(config, "model_type", None)
    if mt is None:
        raise TypeError(f"cannot find config.model_type on {type(obj).__name__}")
    return str(mt)


def family_for(model_or_config: Any) -> Family:
    """The family of a model, a config, a config dict, a checkpoint directory, or a
    family name / model_type string (looked up by ``config.model_type``)."""
    mt = _model_type_of(model_or_config)
    for fam in FAMILIES.values():
        if mt in fam.model_types or mt == fam.name:
            return fam
    known = ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES.values())
    raise ValueError(f"model_type {mt!r} is not a supported VLM family; known families: {known}")


def find_family(model_or_config: Any) -> Family | None:
    """Like :func:`family_for`, but ``None`` for a model of no VLM family (a text-only LM)."""
    try:
        return family_for(model_or_config)
    except ValueError:
        return None


def token_ids(tokenizer: Any, tokens: tuple[str, ...] | list[str]) -> list[int]:
    """Ids of those ``tokens`` the tokenizer has as one token, in order, without repeats
    (a real checkpoint may lack a token the family table names, e.g. video tokens)."""
    unk, unk_id = getattr(tokenizer, "unk_token", None), getattr(tokenizer, "unk_token_id", None)
    out: list[int] = []
    for t in tokens:
        i = tokenizer.convert_tokens_to_ids(t)
        if isinstance(i, int) and (t == unk or i != unk_id) and i not in out:
            out.append(i)
    return out


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for w in _WRAPPERS:
            if name.startswith(w):
                name = name[len(w) :]
                changed = True
    return name


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def part_of(family: Family | str, param_name: str) -> Part:
    """Which part (vision / projector / language) a parameter (or module) name belongs
    to. The longest matching prefix wins (so projector beats the vision tower it sits
    in). Raises ``ValueError`` for a name no prefix covers."""
    fam = get_family(family) if isinstance(family, str) else family
    name = _strip_wrappers(param_name)
    best: tuple[int, Part] | None = None
    for part, prefixes in fam.prefixes.items():
        for p in prefixes:
            if _matches(name, p) and (best is None or len(p) > best[0]):
                best = (len(p), part)
    if best is None:
        all_prefixes = {part: list(pfx) for part, pfx in fam.prefixes.items()}
        raise ValueError(
            f"parameter {param_name!r} is not classified for family {fam.name!r} "
            f"(prefixes: {all_prefixes}); update vlmtune/models/families.py"
        )
    return best[1]


def split_parameters(family: Family | str, model: Any) -> dict[Part, list[str]]:
    """Parameter names of ``model`` grouped by part (every name classified or error)."""
    out: dict[Part, list[str]] = {p: [] for p in PARTS}
    for name, _ in model.named_parameters():
        out[part_of(family, name)].append(name)
    return out
