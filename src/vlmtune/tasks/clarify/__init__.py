"""The ambiguity-aware task: when to answer, resolve, enumerate or ask (docs/clarify.md).

``data`` synthesis (``vlmtune synth clarify``), ``judge`` (rule judge, prompts in
``templates/``), ``rewards`` (``aqua``, ``clarify_rubric``), ``metrics`` and ``clarifyvlm``
(ClarifyVLM's metrics), ``task`` (the scorer), ``report`` (its report sections), ``demo``
(``vlmtune demo``), ``recipes/``.
"""

from vlmtune.tasks.clarify.task import ClarifyTask

__all__ = ["ClarifyTask"]
