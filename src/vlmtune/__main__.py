"""``python -m vlmtune`` = the ``vlmtune`` command; what launchers that take a module need
(``accelerate launch -m vlmtune sft RECIPE``, ``torchrun -m vlmtune ...``)."""

from vlmtune.cli import main

raise SystemExit(main())
