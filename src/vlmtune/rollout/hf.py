"""The transformers backend of the generation interface (:mod:`vlmtune.rollout.generator`),
GRPO's groups built from any backend's completions, and the log-probabilities of what was
generated.

:class:`HFGenerator` is the ``hf`` entry of ``GENERATORS``: ``model.generate`` in this
process, over the policy being trained (no copy) or a loaded model. It renders each prompt
as :func:`~vlmtune.batching.render.render_prompt` does (same chat template, same system
prompt, a trailing reference answer left out) and calls the *processor* once per batch of
``batch_size`` prompts, left-padded, so image tensors come out laid out as the family
expects for a batch (Qwen: concatenated patches + ``image_grid_thw``; LLaVA / Gemma3 /
InternVL: stacked images; Idefics3: a per-sample image axis). Samples with and without
images never share a processor call (processors want images for every text or none). A
prompt's ``n`` sampled completions (GRPO's group) come from one forward of the prompt and its
images, whose key/value cache is repeated ``n`` times, all groups of a call then decoding
together (:mod:`vlmtune.rollout.prefix_sampling`); greedy decoding, stop strings, streaming,
cancelling and sampler log-probs go through ``generate`` (``num_return_sequences`` expands
the encoded prompt). Greedy outputs do not depend on ``batch_size`` (a test holds them side
by side).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from vlmtune.batching.collate import collate
from vlmtune.batching.render import prompt_text
from vlmtune.data.sample import Sample
from vlmtune.models.families import Family, family_for, find_family
from vlmtune.models.loading import end_token_ids, pad_token_id
from vlmtune.rollout.generator import Completion, Generator, SamplingParams
from vlmtune.rollout.prefix_sampling import inner_model, next_position, position_ids, sample_on_shared_prefix

__all__ = ["Completion", "HFGenerator", "Rollout", "SamplingParams", "completion_logps", "group_inputs",
           "rollout_logps", "sample_groups", "shared_prefix_logps", "stop_and_pad_ids"]


@dataclass
class Rollout:
    """G completions of one prompt: a GRPO group.

    ``completion_ids`` is (G, T) right-padded with ``pad_id``; ``mask`` marks real tokens
    (the end-of-turn token included); ``truncated`` marks completions that hit
    ``max_new_tokens`` without ending; ``sampling_logp`` (G, T), when the backend reported
    them, are the sampler's log-probs of the tokens (:attr:`Completion.logprobs`).
    """

    sample: Sample
    prompt: dict[str, torch.Tensor]  # processor outputs, batch dim 1
    completion_ids: torch.Tensor
    mask: torch.Tensor
    texts: list[str]
    truncated: list[bool]
    sampling_logp: torch.Tensor | None = None

    @classmethod
    def of(cls, sample: Sample, prompt: dict[str, torch.Tensor], completions: Sequence[Completion],
           pad_id: int) -> Rollout:
        """A group from its completions, right-padded to the longest."""
        width = max(c.tokens for c in completions)
        ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(completions), width), dtype=torch.long)
        sampling = torch.zeros((len(completions), width)) if all(c.logprobs is not None for c in completions) \
            else None
        for row, c in enumerate(completions):
            ids[row, :c.tokens], mask[row, :c.tokens] = c.ids, 1
            if sampling is not None:
                sampling[row, :c.tokens] = c.logprobs
        return cls(sample, prompt, ids, mask, [c.text for c in completions], [c.truncated for c in completions],
                   sampling)


def sample_groups(generator: Generator, samples: list[Sample], params: SamplingParams,
                  prompt_inputs: Callable[[Sample], dict[str, torch.Tensor]], pad_id: int) -> list[Rollout]:
    """GRPO's groups: ``params.n`` completions of each prompt from any backend, each with the
    prompt's model inputs that the log-prob passes run on (``prompt_inputs``, i.e.
    ``render_prompt``: what the ``hf`` backend generated from, and what a remote backend's
    server saw)."""
    completions = generator.generate(samples, params)
    return [Rollout.of(s, prompt_inputs(s), group, pad_id) for s, group in zip(samples, completions)]


def stop_and_pad_ids(model: Any, tokenizer: Any, family: Family | None = None) -> tuple[set[int], int]:
    """The ids ``generate`` stops at (with the end tokens of ``family``, by default the model's
    family, none for a text-only model) and the id completions are padded with."""
    end_ids = end_token_ids(model, tokenizer, family or find_family(model))
    return end_ids, pad_token_id(tokenizer, end_ids)


class HFGenerator:
    """The ``hf`` backend (module docstring). Generation stops at the family's end tokens
    (``family`` defaults to the model's; none for a text-only model).

    ``strip_text`` trims white space around each text: training and evaluation compare
    trimmed answers; a server returns exactly what the model wrote. Safe to call from several
    threads (``vlmtune serve``): the tokenizer is used under ``tokenizer_lock`` (fast
    tokenizers are not thread-safe) and sampling takes the global torch RNG in turn.
    """

    def __init__(self, model: Any, processor: Any, *, system_prompt: str | None = None,
                 family: Family | None = None, batch_size: int = 8, strip_text: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.processor, self.system_prompt = model, processor, system_prompt
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size, self.strip_text = batch_size, strip_text
        self.end_ids, self.pad_id = stop_and_pad_ids(model, self.tokenizer, family)
        family = family or find_family(model)
        self.position_style = family.position_style if family else "1d"
        self.tokenizer_lock = threading.Lock()
        self.rng_lock = threading.Lock()

    def generate(self, samples: Sequence[Sample], params: SamplingParams, *,
                 on_batch: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """The :class:`~vlmtune.rollout.generator.Generator` method: ``params.n`` completions
        of each sample, ``batch_size`` samples per ``generate`` call."""
        out: list[list[Completion]] = [[] for _ in samples]
        for start in range(0, len(samples), self.batch_size):
            idx = range(start, min(start + self.batch_size, len(samples)))
            shared = self.generate_shared(samples[start:idx.stop], params) \
                if params.n > 1 and params.do_sample and not params.stop else None
            if shared is not None:
                out[start:idx.stop] = shared
                if on_batch is not None:
                    on_batch(len(idx))
                continue
            for group in ([i for i in idx if samples[i].images], [i for i in idx if not samples[i].images]):
                if group:
                    inputs = self.encode([samples[i] for i in group])
                    for i, completions in zip(group, self.generate_encoded(inputs, params)):
                        out[i] = completions
            if on_batch is not None:
                on_batch(len(idx))
        return out

    def generate_shared(self, samples: Sequence[Sample], params: SamplingParams) -> list[list[Completion]] | None:
        """``params.n`` sampled completions of each sample, its prompt and images run once
        (:mod:`vlmtune.rollout.prefix_sampling`), all samples' completions decoded together;
        None when the model keeps no key/value cache."""
        device = next(self.model.parameters()).device
        prompts = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in self.encode([s]).items()}
                   for s in samples]
        was_training = self.model.training
        self.model.eval()
        try:
            with self.rng_lock:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                groups = sample_on_shared_prefix(self.model, prompts, params, self.end_ids, self.pad_id,
                                                 self.position_style)
        finally:
            self.model.train(was_training)
        if groups is None:
            return None
        with self.tokenizer_lock:
            return [[self._completion(row, (), False) for row in ids.cpu()] for ids in groups]

    def encode(self, samples: Sequence[Sample]) -> dict[str, Any]:
        """Processor outputs for a batch of prompts, left-padded (all with images or none)."""
        texts = [prompt_text(s, self.processor, self.system_prompt) for s in samples]
        images = [s.load_images() for s in samples]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "add_special_tokens": False}
        if len(samples) > 1:  # (a tokenizer without a pad token refuses padding=True even for one text)
            kwargs["padding"] = True
        if any(images):
            if not all(images):
                raise ValueError("encode: a batch mixes samples with and without images")
            kwargs["images"] = images
        with self.tokenizer_lock:
            old_side = getattr(self.tokenizer, "padding_side", "right")
            self.tokenizer.padding_side = "left"
            try:
                return dict(self.processor(**kwargs))
            finally:
                self.tokenizer.padding_side = old_side

    def generate_encoded(self, inputs: dict[str, Any], params: SamplingParams, *,
                         cancel: threading.Event | None = None, on_text: Callable[[str], None] | None = None,
                         logprobs: bool = False) -> list[list[Completion]]:
        """One ``generate`` call over encoded prompts (:meth:`encode`, batch dim B): ``params.n``
        completions of each. ``cancel`` stops every row at the next token; ``on_text`` (one
        prompt, n=1) receives the text as it grows (streaming); ``logprobs`` fills
        :attr:`Completion.logprobs` (what a server reports to a trainer)."""
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        prompts, prompt_len = inputs["input_ids"].shape
        copies = params.n if params.do_sample else 1  # greedy gives n identical completions: decode once
        kwargs: dict[str, Any] = dict(max_new_tokens=params.max_new_tokens, num_return_sequences=copies,
                                      pad_token_id=self.pad_id, eos_token_id=sorted(self.end_ids))
        if params.do_sample:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
        else:  # the model's generation config may name sampling settings; greedy uses none
            kwargs.update(do_sample=False, top_k=None, top_p=None, temperature=None)
        criteria = self._criteria(params.stop, prompt_len, cancel)
        if criteria:
            kwargs["stopping_criteria"] = criteria
        if logprobs:  # the raw logits of every step; the sampling distribution is computed below
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        if on_text is not None:
            if prompts * copies != 1:
                raise ValueError("on_text streams one completion of one prompt")
            kwargs["streamer"] = _TextCallback(self.tokenizer, self.tokenizer_lock, on_text)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():  # (not inference_mode: GRPO trains on the sampled ids)
                if params.do_sample:
                    with self.rng_lock:
                        if params.seed is not None:
                            torch.manual_seed(params.seed)
                        seqs = self.model.generate(**inputs, **kwargs)
                else:
                    seqs = self.model.generate(**inputs, **kwargs)
        finally:
            self.model.train(was_training)
        token_logps = None
        if logprobs:
            seqs, token_logps = seqs.sequences, sampled_logps(seqs.logits, seqs.sequences[:, prompt_len:],
                                                              params.temperature if params.do_sample else 1.0)
        # Only a stop string or the cancel flag ends a row early without an end token; generate
        # pads such a row, and only such a row, after its last token.
        padded = bool(params.stop) or cancel is not None
        with self.tokenizer_lock:
            rows = [self._completion(row, params.stop, padded) for row in seqs[:, prompt_len:].cpu()]
        if token_logps is not None:
            for row, logps in zip(rows, token_logps.cpu()):
                row.logprobs = logps[:row.tokens]
        return [[rows[p * copies + i % copies] for i in range(params.n)] for p in range(prompts)]

    def _completion(self, row: torch.Tensor, stop: Sequence[str], padded: bool) -> Completion:
        tokens = row.tolist()
        end = next((k for k, t in enumerate(tokens) if t in self.end_ids), None)
        if end is not None:
            ids, body, reason = row[:end + 1], tokens[:end], "stop"
        else:
            n = len(tokens)
            while padded and n and tokens[n - 1] == self.pad_id:
                n -= 1
            ids, body, reason = row[:n], tokens[:n], "length"
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:
            text, reason = text[:min(cuts)], "stop"
        return Completion(ids, text.strip() if self.strip_text else text, reason)

    def _criteria(self, stop: Sequence[str], prompt_len: int, cancel: threading.Event | None) -> StoppingCriteriaList:
        criteria = StoppingCriteriaList()
        if cancel is not None:
            criteria.append(_Cancelled(cancel))
        if stop:  # (transformers' stop_strings precomputes over the whole vocabulary: slow)
            criteria.append(_StopOnText(self, list(stop), prompt_len))
        return criteria


def sampled_logps(step_logits: Sequence[torch.Tensor], sampled: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, T) log-probabilities of the ``sampled`` tokens (B, T) under each step's
    distribution at ``temperature`` (``step_logits``: T tensors of (B, V) raw logits), which
    is what the trainer's log-prob passes compute for the same tokens."""
    logits = torch.stack(list(step_logits), dim=1)[:, :sampled.shape[1]].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, sampled[:, :logits.shape[1], None]).squeeze(-1)


class _Cancelled(StoppingCriteria):
    """Stops every row once ``flag`` is set (a server's client went away, or it shuts down)."""

    def __init__(self, flag: threading.Event):
        self.flag = flag

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


class _StopOnText(StoppingCriteria):
    """Stops a row once its decoded tail contains a stop string."""

    def __init__(self, generator: HFGenerator, stop: list[str], prompt_len: int):
        self.generator, self.stop, self.prompt_len = generator, stop, prompt_len
        self.window = max(len(s) for s in stop) + 8  # tokens: enough to cover any stop string

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        with self.generator.tokenizer_lock:
            for i, row in enumerate(input_ids[:, start:].tolist()):
                tail = self.generator.tokenizer.decode(row, skip_special_tokens=True)
                done[i] = any(s in tail for s in self.stop)
        return done


class _TextCallback(TextStreamer):
    """transformers' incremental decoding (text is released at word boundaries, so a
    multi-token character is never cut), handed to a callback instead of printed."""

    def __init__(self, tokenizer: Any, lock: threading.Lock, on_text: Callable[[str], None]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.lock, self.on_text = lock, on_text

    def put(self, value: torch.Tensor) -> None:
        with self.lock:
            super().put(value)

    def end(self) -> None:
        with self.lock:
            super().end()

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


def group_inputs(rollout: Rollout, pad_id: int, token_keys: tuple[str, ...]) -> dict[str, Any]:
    """One forward batch for a group: the prompt (with its images) repeated G times, each
    followed by its completion. Prompt lengths are equal, so completions line up.

    ``token_keys`` (``family.token_keys``) are the per-token prompt tensors: the ids get the
    completion, the attention mask its mask, the others (image-token markers) 0, as text.
    """
    g, tail = rollout.completion_ids.shape
    rows = []
    for i in range(g):
        item = dict(rollout.prompt)
        item["input_ids"] = torch.cat([rollout.prompt["input_ids"], rollout.completion_ids[i:i + 1]], dim=1)
        for key in token_keys:
            if key in item and key != "input_ids":
                fill = rollout.mask[i:i + 1] if key == "attention_mask" else torch.zeros(1, tail)
                item[key] = torch.cat([item[key], fill.to(item[key].dtype)], dim=1)
        rows.append(item)
    return collate(rows, pad_id, token_keys)


def _token_logps(logits: torch.Tensor, completion_ids: torch.Tensor, temperature: float, with_entropy: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (G, T, V) predicting completion_ids (G, T) -> log-probs (G, T), entropies (G, T)."""
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp_all.gather(-1, completion_ids.to(logits.device).unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).detach() if with_entropy else None
    return logp, entropy


def completion_logps(model: Any, batch: dict[str, Any], prompt_len: int, completion_ids: torch.Tensor,
                     with_entropy: bool = False, temperature: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (G, T) of the completion tokens under the sampling temperature
    (as the tokens were drawn), and optionally the entropies (G, T). The padded path: the
    prompt, images included, is in every row of ``batch``."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    logits = model(**batch, use_cache=False).logits  # (G, P + T, V)
    t = completion_ids.shape[1]
    return _token_logps(logits[:, prompt_len - 1: prompt_len - 1 + t], completion_ids, temperature, with_entropy)


def shared_prefix_logps(model: Any, rollout: Rollout, position_style: str, with_entropy: bool = False,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Like :func:`completion_logps`, but the prompt and its images run once per group.

    The prompt's key/value cache is computed once (with gradients), repeated G times, and the
    G completions attend to it: DESIGN's prompt segment with G child segments. Completion
    positions continue after the prompt (for mRoPE, after the prompt's largest position).
    Returns None when the model gives no cache (gradient checkpointing disables it); callers
    then use the padded path.
    """
    device = next(model.parameters()).device
    prompt = {k: v.to(device) if torch.is_tensor(v) else v for k, v in rollout.prompt.items()}
    ids, mask = rollout.completion_ids.to(device), rollout.mask.to(device)
    (g, t), p = ids.shape, prompt["input_ids"].shape[1]
    first = model(**prompt, use_cache=True, logits_to_keep=1)
    cache = first.past_key_values
    if cache is None:
        return None
    cache.batch_repeat_interleave(g)
    start = torch.full((g,), next_position(model, p, position_style), device=device)
    positions = position_ids(start, 0, t, position_style)
    attention = torch.cat([prompt["attention_mask"].expand(g, -1), mask], dim=1)
    rest = model(input_ids=ids, attention_mask=attention, past_key_values=cache, use_cache=True,
                 cache_position=torch.arange(p, p + t, device=device), position_ids=positions).logits
    logits = torch.cat([first.logits[:, -1:].expand(g, -1, -1), rest[:, :-1]], dim=1)  # (G, T, V)
    return _token_logps(logits, ids, temperature, with_entropy)


def rollout_logps(model: Any, rollout: Rollout, pad_id: int, *, position_style: str | None = None,
                  with_entropy: bool = False, temperature: float = 1.0
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Completion log-probs of one group: shared-prefix when ``position_style`` is given (and
    the model keeps a cache), else the padded path."""
    if position_style is not None:
        out = shared_prefix_logps(model, rollout, position_style, with_entropy, temperature)
        if out is not None:
            return out
    token_keys = family_for(inner_model(model)).token_keys
    return completion_logps(model, group_inputs(rollout, pad_id, token_keys), rollout.prompt["input_ids"].shape[1],
                            rollout.completion_ids, with_entropy=with_entropy, temperature=temperature)
