"""One way to write a command: ``NAME key=value ...`` in Hydra's override grammar, ``--help`` listing the keys.

``train.py`` and ``python -m vtok.eval`` compose the config tree in ``configs/``; the smaller commands
(``vtok-export``, ``vtok-shards``, ``vtok-weights``, ``python -m vtok.data.samples``, ``python -m vtok.llm.caption``)
declare their keys as a dataclass whose fields carry their help in ``metadata["help"]``. Hydra composes the
overrides onto it (types checked, ``key=[a,b]`` for lists, quoting as in ``train.py``), so every command reads
its arguments the same way and a typo stops with Hydra's error naming the key.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf

C = TypeVar("C")

HELP_FLAGS = ("-h", "--help", "help")


def key(default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A documented field of a command's dataclass; without a default the key is required."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def usage(command: str, description: str, schema: type, passthrough: str | None = None) -> str:
    """The ``--help`` text: the description and every key with its type, default (or ``required``) and help."""
    lines = [f"usage: {command} " + " ".join(f"{f.name}=..." for f in dataclasses.fields(schema)
                                               if _required(f)) + " [key=value ...]", "",
             textwrap.fill(description, 100), "", "keys:"]
    for field in dataclasses.fields(schema):
        default = "required" if _required(field) else f"default {_default(field)!r}"
        lines.append(f"  {field.name}  ({_type_name(field.type)}, {default})")
        lines += textwrap.wrap(field.metadata.get("help", ""), 100, initial_indent="      ",
                               subsequent_indent="      ")
    if passthrough:
        lines += ["", passthrough]
    lines += ["", "Values follow Hydra's override grammar: key=value, key=[a,b], key=null, quoted strings."]
    return "\n".join(lines)


def parse(command: str, schema: type[C], argv: list[str], passthrough: bool = False
          ) -> tuple[DictConfig, list[str]]:
    """``key=value`` arguments -> the composed config (typed by ``schema``) and, with ``passthrough``, the
    overrides whose keys ``schema`` does not have (for commands that compose another config with them).

    Raises:
        SystemExit(2): a malformed override, an unknown key (without ``passthrough``), a wrong type or a missing
            required key; the message names it.
    """
    from hydra import compose, initialize
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    names = {f.name for f in dataclasses.fields(schema)}
    own = [a for a in argv if not passthrough or _key_of(a) in names]
    rest = [a for a in argv if passthrough and _key_of(a) not in names]
    store_name = f"vtok_command_{command.replace('-', '_').replace('.', '_').replace(' ', '_')}"
    ConfigStore.instance().store(name=store_name, node=schema)
    try:
        with initialize(version_base="1.3", config_path=None):
            cfg = compose(config_name=store_name, overrides=own)
        missing = sorted(OmegaConf.missing_keys(cfg))
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        _fail(command, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    if missing:
        _fail(command, f"missing required key(s): {', '.join(f'{m}=...' for m in missing)}")
    return cfg, rest


def run(command: str, description: str, schema: type[C], main: Callable[[Any], int | None],
        argv: list[str] | None = None, passthrough: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) for ``schema`` and call ``main(cfg)``; ``--help`` prints
    :func:`usage`. Returns the exit code (``main``'s, 0 when it returns ``None``, 2 for a usage error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in HELP_FLAGS for a in args):
        print(usage(command, description, schema, passthrough))
        return 0
    try:
        cfg, rest = parse(command, schema, args, passthrough=passthrough is not None)
    except SystemExit as stop:
        return int(stop.code or 0)
    result = main((cfg, rest) if passthrough is not None else cfg)
    return 0 if result is None else int(result)


def _fail(command: str, message: str) -> None:
    print(f"{command}: {message}\nrun `{command} --help` for its keys", file=sys.stderr)
    raise SystemExit(2)


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split(".", 1)[0]


def _required(field: dataclasses.Field) -> bool:
    return field.default is MISSING and field.default_factory is dataclasses.MISSING


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("Optional", "optional")
