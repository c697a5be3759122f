"""Imported first by the ``jidocoder`` command (``cli.py``), never by the library: the command's
process, and so the daemon and every session forked from it, runs no pydantic plugins.

pydantic looks for plugins (entry points of the ``pydantic`` group) while it builds its first
model: it imports ``importlib.metadata`` (with ``email``, ``zipfile``, ``csv``...) and reads the
metadata of every installed distribution. That was 15-20 ms of a daemon start of ~110 ms
(``python -X importtime``), for plugins the daemon has no use for: its models are its own data,
not an application's. ``PYDANTIC_DISABLE_PLUGINS=__all__``, pydantic's documented switch, skips
the reading but not the import, so the loader module is put in place here answering as that
switch makes the real one answer: no plugins. A process that imported pydantic's loader already
keeps it. A library user's process is never touched: ``import jidocoder`` does not import this.
"""

from __future__ import annotations

import sys
import types

_LOADER = "pydantic.plugin._loader"


def _get_plugins() -> tuple[()]:
    return ()


if _LOADER not in sys.modules:
    _loader = types.ModuleType(_LOADER, "No pydantic plugins in the jidocoder command (see "
                                        "jidocoder._no_plugins).")
    _loader.get_plugins = _get_plugins
    sys.modules[_LOADER] = _loader
