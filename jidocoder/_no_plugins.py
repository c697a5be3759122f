"""Imported first by the ``jidocoder`` command (``cli/__init__.py``), never by the library: the command's
process, and so the daemon and every session forked from it, runs no pydantic plugins.

pydantic looks for plugins (entry points of the ``pydantic`` group) each time it builds a
model's validator. ``PYDANTIC_DISABLE_PLUGINS=__all__`` is pydantic's documented switch to skip
that: set here, before any model is built, and inherited by the background daemon's process.
A value the user set is kept. pydantic still imports ``importlib.metadata`` (≈15 ms,
``python -X importtime``); that cost is accepted rather than reached into pydantic's private
modules to avoid it (docs/benchmarks.md has the figures). A library user's process is never
touched: ``import jidocoder`` does not import this.
"""

from __future__ import annotations

import os

os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
