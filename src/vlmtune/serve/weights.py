"""Changing what the server serves while it runs: LoRA adapters loaded and unloaded by name
(vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``), and the base model's
weights reloaded from a folder (SGLang's ``/update_weights_from_disk``). This is how a trainer
keeps a generation server's policy current (docs/scaling.md).

A request picks its model by name (``model`` in the request): the served model's name, or an
adapter's ``lora_name``. The adapters live in one PEFT model over the served weights, and one
of them (or none: the base) is switched on at a time; generations that need the same one run
together, a switch waits for the running ones to finish, and a load, unload or reload waits
for every generation and runs alone. Nothing here knows HTTP: failures are
:class:`WeightsError` with the status the route answers.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class WeightsError(Exception):
    """A load, unload or reload that did not happen; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")


class ServedWeights:
    """The served model's names and the lock that keeps generations and weight changes apart.

    ``engine.model`` is replaced in place: by a PEFT model when the first adapter loads, by the
    plain model again when the last one is unloaded."""

    def __init__(self, engine: Any, model_name: str, started_as_adapter: bool):
        self.engine, self.model_name = engine, model_name
        # served name -> PEFT adapter name (None: the base model, adapters switched off)
        self.adapter_of: dict[str, str | None] = {model_name: "default" if started_as_adapter else None}
        self.paths: dict[str, str] = {}  # lora_name -> the folder it was loaded from
        self._fresh = (f"adapter_{i}" for i in itertools.count(1))  # PEFT names: no dots, never reused
        self._cond = threading.Condition()
        self._active: str | None = model_name  # the served name switched on in the model
        self._users = 0
        self._writer_waiting = 0
        self._writing = False

    @property
    def adapters(self) -> list[str]:
        return sorted(self.paths)

    # ------------------------------------------------------------------ requests
    def route(self, requested: str | None) -> str:
        """The served name a request's ``model`` selects. A name the server does not know is
        accepted as the base model while no adapter is loaded (clients such as judges send a
        placeholder); once adapters are loaded it is an error, so a typo never silently
        samples from the wrong policy."""
        if requested in self.adapter_of:
            return requested
        if not self.paths:
            return self.model_name
        raise WeightsError(404, f"the model {requested!r} does not exist; this server serves "
                                f"{', '.join(sorted(self.adapter_of))}", "model_not_found")

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Hold the model with ``name``'s adapter switched on (blocking; for a worker thread)."""
        with self._cond:
            while self._writing or self._writer_waiting or (self._users and self._active != name):
                self._cond.wait()
            if self._active != name:
                self._switch(name)
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def _alone(self) -> Iterator[None]:
        """No generation runs while a weight change does (new ones wait for it)."""
        with self._cond:
            self._writer_waiting += 1
            while self._writing or self._users:
                self._cond.wait()
            self._writer_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def _switch(self, name: str) -> None:
        model, adapter = self.engine.model, self.adapter_of[name]
        self._active = name
        if not _is_peft(model):
            return
        if adapter is None:
            model.base_model.disable_adapter_layers()
        else:
            model.base_model.enable_adapter_layers()
            model.set_adapter(adapter)

    # ------------------------------------------------------------------ weight changes
    def load_adapter(self, name: str, path: str, inplace: bool = False) -> None:
        """Load the adapter in ``path`` as ``name`` (``inplace``: replace one of that name)."""
        if not name or not path:
            raise WeightsError(400, "both 'lora_name' and 'lora_path' must be given", "invalid_request")
        if name == self.model_name:
            raise WeightsError(400, f"'{name}' is the served model's own name; give the adapter another",
                               "invalid_request")
        if name in self.paths and not inplace:
            raise WeightsError(400, f"the adapter '{name}' has already been loaded (send load_inplace: true to "
                                    "replace its weights)", "adapter_exists")
        folder = _adapter_folder(path)
        with self._alone():
            model = self.engine.model
            internal = next(self._fresh)
            try:
                if _is_peft(model):
                    model.load_adapter(str(folder), adapter_name=internal)
                else:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, str(folder), adapter_name=internal)
                model.eval()
            except Exception as exc:  # noqa: BLE001 - peft reports a foreign adapter in many types
                raise WeightsError(400, f"{folder}: cannot load this adapter onto the served model "
                                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]})",
                                   "adapter_load_failed") from None
            old = self.adapter_of.get(name)
            self.engine.model, self.adapter_of[name], self.paths[name] = model, internal, str(folder)
            if old is not None:  # replaced in place: switch to the new one first, then drop the old
                model.set_adapter(internal)
                model.delete_adapter(old)
            self._active = None  # the next generation switches explicitly

    def unload_adapter(self, name: str) -> None:
        if name not in self.paths:
            raise WeightsError(404, f"the adapter '{name}' cannot be found (loaded: "
                                    f"{', '.join(self.adapters) or 'none'})", "adapter_not_found")
        with self._alone():
            model, internal = self.engine.model, self.adapter_of.pop(name)
            del self.paths[name]
            if len(model.peft_config) == 1:  # the last one: serve the plain model again
                self.engine.model = model.unload()
            else:
                model.delete_adapter(internal)
            self._active = None

    def reload_weights(self, path: str) -> None:
        """The served model's weights from ``path`` (a transformers folder, or any checkpoint
        format :mod:`vlmtune.weights` reads); the architecture must be the same."""
        from vlmtune.models.loading import ModelLoadError
        from vlmtune.train.checkpoint import load_weights

        folder = Path(path)
        if not folder.is_dir():
            raise WeightsError(404, f"model_path {path!r} is not a directory on the server", "weights_not_found")
        if _is_peft(self.engine.model):
            raise WeightsError(409, f"adapters are loaded ({', '.join(self.adapters) or 'from the start'}); "
                                    "full weights are reloaded into a plain model: unload them first",
                               "adapters_loaded")
        with self._alone():
            try:
                load_weights(self.engine.model, folder)
            except (ModelLoadError, RuntimeError, OSError, ValueError) as exc:
                raise WeightsError(400, f"{folder}: cannot load these weights into the served model "
                                        f"({str(exc).splitlines()[0][:300]})", "weights_load_failed") from None
            self.engine.model.eval()


def _adapter_folder(path: str) -> Path:
    """The folder, checked to hold a PEFT adapter (config and complete weights)."""
    from vlmtune.models.loading import ModelLoadError, check_weights

    folder = Path(path)
    if not (folder / "adapter_config.json").is_file():
        what = "does not exist" if not folder.exists() else "holds no adapter_config.json"
        raise WeightsError(404, f"no adapter found: lora_path {path!r} {what} on the server", "adapter_not_found")
    try:
        check_weights(folder, stem="adapter_model")
    except ModelLoadError as exc:
        raise WeightsError(400, str(exc), "adapter_load_failed") from None
    return folder
