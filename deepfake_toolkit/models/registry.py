"""The model registry: every detector the toolkit knows, by name (loading one is in :mod:`.loading`)."""

from __future__ import annotations

import os

from .spec import ModelSpec
from .weights import WeightsNotFoundError, find_weight_file

_REGISTRY: dict[str, ModelSpec] = {}

class UnknownModelError(KeyError):
    """No model of that name is registered; the message lists the names that are."""

    def __str__(self) -> str:
        return str(self.args[0])


def register_model(spec: ModelSpec, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry.

    Raises:
        ValueError: A model of that name exists and ``replace`` is False.
    """
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"a model named '{spec.name}' is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove a model from the registry (used by tests and plug-ins)."""
    _REGISTRY.pop(name, None)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the registered models, "default" first, optionally filtered by a glob pattern.

    Example:
        >>> list_models("bnext*")  # doctest: +SKIP
        ['bnext_m_dffd', 'bnext_s_cocofake']
    """
    from fnmatch import fnmatch

    names = sorted(_REGISTRY, key=lambda n: (n != "default", n))
    return [n for n in names if pattern is None or fnmatch(n, pattern)]


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``.

    Raises:
        UnknownModelError: No such model.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models()) or "none"
        raise UnknownModelError(f"unknown model '{name}'; known models: {known}") from None


def weights_available(name: str, weights_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether every weight file of model ``name`` is present in the weight folders."""
    spec = get_spec(name)
    try:
        for weight in spec.weights:
            find_weight_file(weight, spec.name, weights_dir)
    except WeightsNotFoundError:
        return False
    return True
