"""SIGHUP: the settings that can change while the daemon runs take the settings file's values.

Which ones is ``config.RELOADABLE``: each is read where it is used, every time (the restart
policy, the memory check, a session's terminate grace, a new client's buffer bound, the log's
level and rotation), so a new ``Settings`` is all it takes. The others (the socket, the table's
size, the spawn mode...) are fixed for the daemon's life; one changed in the file is logged as
needing a restart. A file that cannot be read or holds a bad value changes nothing.
"""

from __future__ import annotations

import logging
import logging.handlers

from ..config import ENV_PREFIX, FLAG_ONLY, RELOADABLE, Settings, read_settings_file
from ..errors import InvalidArgumentError

log = logging.getLogger("jidocoder.daemon")


def reloaded(settings: Settings) -> Settings:
    """``settings`` with the reloadable values the file holds now (the same if there is no file
    or it cannot be used); what changed, and what would need a restart, is logged."""
    if not settings.settings_file:
        log.info("SIGHUP: no settings_file to reload settings from; nothing changed")
        return settings
    try:
        named = {key[len(ENV_PREFIX):].lower(): value
                 for key, value in read_settings_file(settings.settings_file).items()
                 if key[len(ENV_PREFIX):].lower() not in FLAG_ONLY}
        candidate = Settings.model_validate({**settings.model_dump(), **named}, strict=False)
    except (InvalidArgumentError, ValueError) as exc:
        log.error("SIGHUP: settings not reloaded, nothing changed: %s", exc)
        return settings
    changed = {name for name in Settings.model_fields
               if name in named and getattr(candidate, name) != getattr(settings, name)}
    fixed = sorted(changed - RELOADABLE)
    if fixed:
        log.warning("SIGHUP: %s changed in %s but take effect only at the next start",
                    ", ".join(fixed), settings.settings_file)
    applied = sorted(changed & RELOADABLE)
    if not applied:
        log.info("SIGHUP: settings reloaded from %s; none changed", settings.settings_file)
        return settings
    log.info("SIGHUP: settings reloaded from %s: %s", settings.settings_file,
             ", ".join(f"{n} {getattr(settings, n)} -> {getattr(candidate, n)}" for n in applied))
    return settings.model_copy(update={name: getattr(candidate, name) for name in applied})


def apply_log_settings(settings: Settings) -> None:
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    for handler in root.handlers:
        if isinstance(handler, logging.handlers.RotatingFileHandler):
            handler.maxBytes = settings.log_max_bytes
            handler.backupCount = settings.log_backups
