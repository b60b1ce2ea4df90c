"""Allowlists of parts by ``kind``, and the one function that builds a part from plain data.

Configs and exported tokenizers name every part by ``kind`` (``{"kind": "vq", "codebook_size": 1024}``), never by
import path: a part can be built only if its class registered itself under that kind. Each package keeps its own
registries (``vtok.quantizers.registry``, ``vtok.tokenizers.registry``) in a module that imports none of the parts,
so a part that builds other parts (residual VQ, the dual encoder) reads the registry without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, type]):
    """``kind -> class`` for one role (``quantizer``, ``encoder``, ...); a ``dict`` with registration and building.

    Args:
        role: what the parts are, for error messages.
    """

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def register(self, kind: str) -> Callable[[T], T]:
        """Class decorator: ``@QUANTIZERS.register("vq")``.

        Raises:
            ValueError: another class already holds ``kind``.
        """

        def add(cls: T) -> T:
            if kind in self and self[kind] is not cls:
                raise ValueError(f"{self.role} kind {kind!r} is taken by {self[kind].__name__}")
            self[kind] = cls
            return cls

        return add

    def build(self, config: Mapping[str, Any], **defaults: Any) -> Any:
        """``{"kind": ..., **kwargs}`` -> an instance of the class registered under ``kind``; ``defaults`` fill keys
        the config leaves out.

        Raises:
            ValueError: ``kind`` is missing or not registered (the message lists the registered kinds).
        """
        config = dict(config)
        kind = config.pop("kind", None)
        if kind not in self:
            raise ValueError(f"unknown {self.role} kind {kind!r}; choose one of {sorted(self)}")
        return self[kind](**{**defaults, **config})
