"""``QUANTIZERS``: the bottlenecks configs and exported checkpoints may name by ``kind`` (filled by each module's
``@QUANTIZERS.register``; importing :mod:`vtok.quantizers` registers them all)."""

from __future__ import annotations

from vtok.registry import Registry

QUANTIZERS = Registry("quantizer")
