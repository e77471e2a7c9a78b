"""Training methods behind one seam: each module in this package defines one method as `METHOD`.

A method says what it is called, its default learning rate and its options (jobs/retrain.py turns every method's
options into CLI flags), and does three things:

- `attach(model, processor, options, parent)`: make the model trainable its way (freeze what it does not train) and
  return an `Attached`: the parts it adds outside the model's own weights (the `Addition`, trained beside the model)
  and how to export the result into a version folder;
- `apply(model, folder)`: at inference, the `Addition` a version folder holds for this method (None when it holds
  none); the Scorer calls it for every method, so a version runs as it was trained;
- `artifacts`: the files of its own that it writes into a version. A method with artifacts adds to a frozen parent,
  so its version keeps the parent's weights; one without them exports the model's weights.

Adding a method is one new file here: this package finds its modules by itself.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass(frozen=True)
class Option:
    """One setting of a method: a Recipe option and a CLI flag (`adapter_len` -> `--adapter-len`)."""

    name: str
    type: type
    default: Any
    help: str
    minimum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class Addition(nn.Module):
    """What a method adds to a model beyond its own weights: trained beside it, applied by the Scorer.

    `transform` sees the model inputs first (a pixel prompt changes pixel_values); an addition that works inside
    the model (hooks on its layers) leaves them as they are.
    """

    def transform(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return inputs


@dataclass
class Attached:
    """A model set up for training by a method."""

    export: Callable[[str], None]  # write the trained result into a (version) folder
    addition: Addition | None = None  # trainable parts outside the model, or None


class Method:
    """The protocol each method implements (as a subclass, so the defaults below hold)."""

    name: ClassVar[str]
    default_lr: ClassVar[float]
    options: ClassVar[tuple[Option, ...]] = ()
    artifacts: ClassVar[tuple[str, ...]] = ()  # its own files in a version; none: it exports the model's weights

    def attach(self, model: nn.Module, processor: Any, options: dict[str, Any], parent: str) -> Attached:
        raise NotImplementedError

    def apply(self, model: nn.Module, folder: str) -> Addition | None:
        """At inference: this method's addition saved in the local `folder`, put on `model`; None without one."""
        return None

    def found_in(self, folder: str) -> bool:
        return any(os.path.exists(os.path.join(folder, name)) for name in self.artifacts)


@cache
def _registry() -> dict[str, Method]:
    """name -> method, from every module of this package."""
    by_name: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        method = importlib.import_module(f"{__name__}.{info.name}").METHOD
        if method.name in by_name:
            raise RuntimeError(f"two training methods are called {method.name!r}")
        by_name[method.name] = method
    flags = [o.name for m in by_name.values() for o in m.options]
    if len(set(flags)) != len(flags):  # they share one command line
        raise RuntimeError(f"training methods share option names: {sorted(flags)}")
    return by_name


def names() -> tuple[str, ...]:
    """Every method's name, `full` first (the default), then alphabetically."""
    return tuple(sorted(_registry(), key=lambda n: (n != "full", n)))


def get(name: str) -> Method:
    try:
        return _registry()[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; expected one of {names()}") from None


def all_methods() -> list[Method]:
    return [get(n) for n in names()]


def resolve_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's options with defaults filled in; an option of no such name, or out of range, is an error."""
    method = get(name)
    known = {o.name: o for o in method.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {unknown}; its options: {sorted(known) or 'none'}")
    out = {}
    for option in method.options:
        value = given.get(option.name, option.default)
        if value is not None and option.minimum is not None and value < option.minimum:
            raise ValueError(f"{option.name} must be >= {option.minimum} (got {value})")
        out[option.name] = value
    return out


def refuse_foreign_parent(name: str, parent: str) -> None:
    """A version of an additive method is its frozen parent plus an artifact; another method would drop it."""
    for other in all_methods():
        if other.name != name and other.found_in(parent):
            raise ValueError(f"the parent model is a {other.name} version; train it further with --method {other.name}")


def artifact_files() -> frozenset[str]:
    """Every method's own files: a version takes none of them from its parent (its own export brings its own)."""
    return frozenset(f for m in all_methods() for f in m.artifacts)


def apply_all(model: nn.Module, folder: str) -> list[Addition]:
    """The additions a local model folder holds, put on `model` (what the Scorer runs)."""
    return [a for m in all_methods() if (a := m.apply(model, folder)) is not None]


def save_artifact(folder: str, weights: str, tensors: dict[str, torch.Tensor], config_name: str, config: dict) -> None:
    """An additive method's own small artifact beside the model: its tensors as safetensors, its shape as json."""
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, os.path.join(folder, weights))
    with open(os.path.join(folder, config_name), "w") as f:
        json.dump(config, f, indent=2)


def load_artifact(folder: str, weights: str, config_name: str) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(config, tensors) of an artifact written by save_artifact, or None when the folder has none."""
    path = os.path.join(folder, config_name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        config = json.load(f)
    return config, load_file(os.path.join(folder, weights))
