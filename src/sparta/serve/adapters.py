"""The models a server answers: one base model in memory and any number of SpaRTA adapters of it, each a model id.

The base model is opened once (`sparta.runs.open_model`). Each adapter is a language-modelling (SFT) SpaRTA run:
its adapter goes onto the base with `SpartaModel.load_adapter` (checked against the base model's fingerprint
first, so a mismatched adapter is refused and nothing changes) and is made live with `set_adapter` (O(m)
in-place scatters, W0 restored bit for bit), or disabled for the base model's own id. Each id has a `Loaded`
view: the shared model with the run's tokenizer, task, chat format and precision, so its prompts render as
`sparta generate` renders them.

`use(name)` holds `lock` while a model is live: the scheduler runs each batch inside it, and loading and unloading
take it too, so no token of one adapter's answer is ever computed with another adapter's deltas.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from sparta.adapter import SpartaModel
from sparta.errors import SpartaError
from sparta.fileio import read_json
from sparta.methods import METHODS
from sparta.runs import Loaded, open_model, untie_lm_head, view_of_run
from sparta.runs.causal import LANGUAGE_MODELLING, base_model_of, is_causal_lm
from sparta.runs.layout import ADAPTER_DIR, RUN_FILE, kind_of

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")


class UnknownModel(SpartaError):
    """A model id the server does not hold (HTTP 404)."""


class NotAllowed(SpartaError):
    """A runtime load from outside the allowed folders, or with runtime loading off (HTTP 403)."""


def model_id(name: str) -> str:
    """The id of a base model given as a name or a directory: the name, or the directory's own name."""
    return Path(name).name if Path(name).is_dir() else name


def check_sparta_run(run_dir: Path) -> dict:
    """run.json of a SpaRTA language-modelling run, else a SpartaError saying what `run_dir` is instead."""
    if kind_of(run_dir) != "run":
        raise SpartaError(f"{run_dir} is not a training run directory (no {RUN_FILE} and {ADAPTER_DIR}/)")
    info = read_json(run_dir / RUN_FILE)
    objective, method = info.get("objective", "classification"), info.get("method", "")
    if not is_causal_lm(objective):
        raise SpartaError(
            f"{run_dir} is a {objective} run; sparta serve serves causal-LM runs (SFT, DPO, GRPO)"
        )
    if method not in METHODS or not METHODS[method].sparse_adapter or METHODS[method].saves_model:
        raise SpartaError(
            f"{run_dir} is a {method or 'unknown'} run; only SpaRTA adapters switch in place on one base model "
            "(serve another method's run on its own: sparta export it, then sparta serve the export)"
        )
    return info


class AdapterPool:
    """The base model and its adapters, by model id (see the module docstring)."""

    def __init__(
        self, base: Loaded, base_name: str, allowed: list[Path] | None = None, precision: str | None = None
    ):
        self.lock = threading.RLock()
        self.precision = precision  # adapters compute in it (None: each run's own, as `sparta generate` does)
        self.base_name = base_name
        self.views: dict[str, Loaded] = {base_name: base}
        self.allowed = [Path(p).resolve() for p in allowed or []]
        self._base = base
        self._sparta: SpartaModel | None = None

    @classmethod
    def open(
        cls,
        base_or_run: str,
        adapters: dict[str, str],
        *,
        device: str | None = None,
        dtype: str | None = None,
        precision: str | None = None,
        allowed: list[Path] | None = None,
        base_name: str | None = None,
    ) -> AdapterPool:
        """The pool of a base model (or the base of a run, which is then served too, named by its directory)
        and the `adapters` {model id: run dir}."""
        adapters = dict(adapters)
        base = base_or_run
        if kind_of(base_or_run) == "run":
            info = check_sparta_run(Path(base_or_run))
            adapters = {Path(base_or_run).resolve().name: base_or_run, **adapters}
            resolved = base_model_of(info)
            base = resolved.alias or resolved.path
            base_name = base_name or model_id(info["model"])
        loaded = open_model(
            base, device=device, dtype=dtype, objective=LANGUAGE_MODELLING, precision=precision
        )
        pool = cls(loaded, base_name or model_id(base_or_run), allowed, precision)
        for name, run_dir in adapters.items():
            pool.load(name, run_dir)
        return pool

    @property
    def names(self) -> list[str]:
        return list(self.views)

    def view(self, name: str) -> Loaded:
        """The `Loaded` of model id `name` (for rendering prompts; `use` it to generate)."""
        if name not in self.views:
            raise UnknownModel(f"the model {name!r} does not exist; served: {', '.join(self.views)}")
        return self.views[name]

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Loaded]:
        """Hold the lock with `name` live: its adapter switched in place, or every adapter disabled for the base."""
        with self.lock:
            view = self.view(name)
            if name == self.base_name and self._sparta is not None:
                with self._sparta.disable_adapter():
                    yield view
                return
            if self._sparta is not None:
                self._sparta.set_adapter(name)
            yield view

    def runtime_dir(self, path: str) -> Path:
        """The run directory `path` names, if it lies inside an allowed folder (relative paths are read from each
        in turn; symlinks and `..` resolved before the check), else `NotAllowed`."""
        if not self.allowed:
            raise NotAllowed(
                "loading adapters at runtime is off; start the server with --adapter-root DIR to allow it"
            )
        inside = False
        for root in self.allowed:
            candidate = (root / path).resolve()
            inside = inside or candidate.is_relative_to(root)
            if candidate.is_relative_to(root) and candidate.exists():
                return candidate
        if inside:
            raise SpartaError(f"there is no run directory {path!r} in the allowed adapter folders")
        raise NotAllowed(
            f"{path!r} is not inside an allowed adapter folder ({', '.join(map(str, self.allowed))})"
        )

    def load(self, name: str, run_dir: str | Path) -> None:
        """Serve the SpaRTA run in `run_dir` as model id `name`, after checking it is an adapter of this base."""
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SpartaError(
                f"adapter name {name!r} must be 1-128 letters, digits and . _ : / - (starting with a letter or digit)"
            )
        run_dir = Path(run_dir)
        info = check_sparta_run(run_dir)
        view = view_of_run(run_dir, self._base.model, self._base.device, self.precision)
        with self.lock:
            if name in self.views:
                raise SpartaError(
                    f"a model named {name!r} is served already; unload it first or pick another name"
                )
            if info.get("lm_head_untied"):
                untie_lm_head(
                    self._base.model
                )  # a tied head gets its own copy (same values; untied: nothing)
            adapter = run_dir / ADAPTER_DIR
            if self._sparta is None:
                self._sparta = SpartaModel.from_pretrained(self._base.model, adapter, adapter_name=name)
            else:
                self._sparta.load_adapter(adapter, name)
            self.views[name] = view

    def unload(self, name: str) -> None:
        """Stop serving adapter `name` (the base model stays)."""
        with self.lock:
            if name == self.base_name:
                raise SpartaError(f"{name!r} is the base model; only adapters can be unloaded")
            self.view(name)
            sparta = self._sparta
            if sparta.active_adapter == name:
                others = [n for n in sparta.adapter_names if n != name]
                if others:
                    sparta.set_adapter(others[0])
                else:
                    sparta.unload()  # the last adapter: the plain base model, W0 exactly
                    self._sparta = None
            if self._sparta is not None:
                sparta.delete_adapter(name)
            del self.views[name]
