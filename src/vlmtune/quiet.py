"""Known third-party console noise, filtered once when the ``vlmtune`` command starts.

Each entry names the exact message and the module that emits it, so nothing else from those
libraries (nor any other warning) is hidden:

- bitsandbytes logs ``Failed to load CPU gemm_4bit_forward ... No module named 'kernels'`` on
  every run on a CPU with AVX512-BF16 (LoRA runs included, since bitsandbytes is imported
  with peft): an optional kernel package is missing and its own fallback is used.
- transformers 5 warns ``FutureWarning: `gradient_checkpointing_enable` is deprecated and will
  be removed in v6`` (and the same for ``is_gradient_checkpointing``) when peft calls the old
  names; the user cannot act on it.
- torch's FSDP2 warns ``FSDP2-wrapped module (...) returned a view tensor`` once per process
  when the model's logits are a slice (``logits_to_keep``); the warning is about in-place ops
  on that view, which vlmtune's losses never do.
"""

from __future__ import annotations

import logging
import re
import warnings

LOG_NOISE: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", r"Failed to load CPU gemm_4bit_forward"),
)
"""(logger name, message regex) of log records dropped."""

WARNING_NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, r"`\w+` is deprecated and will be removed in v6", r"transformers\."),
    (UserWarning, r"FSDP2-wrapped module \(\w+\) returned a view tensor", r"torch\.distributed\.fsdp\."),
)
"""(category, message regex, module regex) of warnings ignored."""

_done = False


class _DropMessage(logging.Filter):
    """Drops the records of one logger whose message matches a pattern."""

    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(str(record.msg))


def quiet_third_party() -> None:
    """Install the filters above (once per process)."""
    global _done
    if _done:
        return
    for name, pattern in LOG_NOISE:
        logging.getLogger(name).addFilter(_DropMessage(pattern))
    for category, message, module in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _done = True


def hide_library_progress_bars() -> None:
    """No download/loading bars from the Hugging Face libraries (``--no-progress``)."""
    import os
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers is imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
