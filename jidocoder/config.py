"""Every daemon setting in one model: its default, its environment variable, its CLI flag.

A setting ``max_sessions`` is read, in rising precedence, from its default, from
``JIDOCODER_MAX_SESSIONS`` and from ``jidocoder daemon start --max-sessions``. The README's
settings table is generated from this model (``python -m jidocoder.config``), so it cannot drift.

A setting in ``FLAG_ONLY`` is read from the command line only (docs/api.md §8: an inherited
environment variable must not turn the ``debug_*`` operations on). A background daemon inherits
the other settings as environment variables (``to_env``) and these as flags (``to_flags``).

``settings_file`` names a file of ``JIDOCODER_<NAME>=VALUE`` lines (systemd's EnvironmentFile
syntax, so one file serves the unit and the daemon): read at start beneath the environment, and
read again on SIGHUP, when the settings in ``RELOADABLE`` take the values it holds
(daemon/reload.py). The others are fixed for the daemon's life (the table's size, the socket).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._sockdir import SOCKET_NAME, default_socket_dir
from .errors import InvalidArgumentError

ENV_PREFIX = "JIDOCODER_"
MiB = 1024 * 1024
FLAG_ONLY = frozenset({"debug_ops"})  # never read from the environment: see the module docstring
# What SIGHUP may change in a running daemon: each is read where it is used, every time.
RELOADABLE = frozenset({"max_restarts", "max_seconds", "memory_limit_mb", "terminate_grace",
                        "client_buffer_bytes", "log_level", "log_max_bytes", "log_backups"})


def default_socket_path(env: Mapping[str, str] | None = None) -> str:
    """$JIDOCODER_SOCKET, else $XDG_RUNTIME_DIR/jidocoder/daemon.sock, else /tmp/jidocoder-<uid>/."""
    env = os.environ if env is None else env
    if env.get("JIDOCODER_SOCKET"):
        return env["JIDOCODER_SOCKET"]
    return str(Path(default_socket_dir(env)) / SOCKET_NAME)


def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    """$JIDOCODER_STATE_DIR, else $XDG_STATE_HOME/jidocoder, else ~/.local/state/jidocoder."""
    env = os.environ if env is None else env
    if env.get("JIDOCODER_STATE_DIR"):
        return env["JIDOCODER_STATE_DIR"]
    if env.get("XDG_STATE_HOME"):
        return str(Path(env["XDG_STATE_HOME"]) / "jidocoder")
    return str(Path.home() / ".local" / "state" / "jidocoder")


class Settings(BaseModel):
    """The daemon's settings. Field descriptions become the CLI help and the README table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    socket: str = Field("", description="Unix socket the daemon listens on (default: see README).")
    state_dir: str = Field("", description="Directory for the store and daemon.log (default: see README).")
    max_sessions: int = Field(100_000, ge=1, le=1_000_000,
                              description="Sessions known at once, live or hibernated; one more is limit_exceeded.")
    max_live_sessions: int = Field(4096, ge=1, le=1_000_000,
                                   description="Session processes alive at once; creating or reviving one more "
                                   "hibernates the least recently used live session first.")
    hibernate_after_minutes: float = Field(60.0, ge=0,
                                           description="A session with no call for this long (minutes; fractions "
                                           "allowed) is hibernated: its process exits, its data stays. 0: never.")
    max_restarts: int = Field(10, ge=0, description="Restarts of one session allowed within max_seconds.")
    max_seconds: float = Field(60.0, gt=0, description="Window (s) in which max_restarts is counted.")
    max_request_bytes: int = Field(16 * MiB, ge=1024, le=1024 * MiB,
                                   description="Largest request a client may send, in bytes.")
    hang_timeout: float = Field(10.0, gt=0,
                                description="A session whose loop has not turned for this long (s) "
                                            "is killed as hung.")
    durability: Literal["normal", "full"] = Field(
        "normal", description="normal: a call survives any process crash; "
                              "full: also a power loss (fsync per call).")
    memory_limit_mb: int = Field(2048, ge=16,
                                 description="Resident memory (MiB) past which a session process "
                                             "is killed and restarted.")
    cache_max_bytes: int = Field(64 * MiB, ge=0,
                                 description="Bytes of file content one session may cache; "
                                             "least recently used goes first.")
    client_buffer_bytes: int = Field(8 * MiB, ge=64 * 1024,
                                     description="Unsent bytes a client may fall behind before it is disconnected.")
    event_history: int = Field(
        1000, ge=0, description="Events held per topic, for subscriptions resumed with since (docs/api.md §10).")
    spare_processes: int = Field(1, ge=0, le=64,
                                 description="Session processes kept started and waiting, "
                                             "so that a create waits for no fork.")
    spawn: Literal["auto", "clone", "fork"] = Field(
        "auto", description="How session processes are made: clone (from a template process; "
                            "x86_64 and aarch64), fork (by the daemon), or auto.")
    backend: Literal["local", "ray"] = Field(
        "local", description="Where sessions run: local (a forked process each) or ray (a Ray actor "
                             "each, anywhere in a Ray cluster; needs pip install 'jidocoder[ray]', see docs/ray.md).")
    ray_address: str = Field("", description="The Ray cluster to run sessions in with backend ray "
                             "(ray.init's address; empty: a cluster started on this machine).")
    terminate_grace: float = Field(2.0, gt=0, description="Seconds between SIGTERM and SIGKILL when a session ends.")
    log_max_bytes: int = Field(10 * MiB, ge=4096, description="daemon.log is rotated past this size.")
    log_backups: int = Field(3, ge=0, description="Rotated daemon.log files kept.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Least level logged.")
    settings_file: str = Field("", description="A file of JIDOCODER_<NAME>=VALUE lines, read at start "
                               "(beneath the environment) and again on SIGHUP (see docs/operations.md).")
    debug_ops: bool = Field(False, description="Serve the test-only debug_* session operations (never in "
                            "production). Flag only: JIDOCODER_DEBUG_OPS is ignored, so an inherited "
                            "environment cannot turn them on.")

    @property
    def socket_path(self) -> str:
        return self.socket or default_socket_path()

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or default_state_dir())

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             env: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then JIDOCODER_<NAME> variables, then ``overrides`` (CLI flags; None skipped)."""
        env = os.environ if env is None else env
        path = (overrides or {}).get("settings_file") or env.get(ENV_PREFIX + "SETTINGS_FILE")
        if path:
            env = {**read_settings_file(path), **env}
        values: dict[str, Any] = {}
        for name in cls.model_fields.keys() - FLAG_ONLY:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw not in (None, ""):
                values[name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            settings = cls.model_validate(values, strict=False)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else None
            raise InvalidArgumentError(f"bad setting {field}: {first['msg']}", code="invalid_setting",
                                       field=field) from None
        return settings.model_copy(update={"socket": settings.socket_path,
                                           "state_dir": str(settings.state_path)})

    def to_env(self) -> dict[str, str]:
        """These settings as JIDOCODER_<NAME> variables (how a background daemon inherits them),
        but those in ``FLAG_ONLY``: see ``to_flags``."""
        return {ENV_PREFIX + name.upper(): str(getattr(self, name))
                for name in type(self).model_fields if name not in FLAG_ONLY}

    def to_flags(self) -> list[str]:
        """The ``FLAG_ONLY`` settings that differ from their default, as command-line flags."""
        flags: list[str] = []
        for name in sorted(FLAG_ONLY):
            value = getattr(self, name)
            if value != type(self).model_fields[name].default:
                flags += [flag_name(name), str(value)]
        return flags


def read_settings_file(path: str) -> dict[str, str]:
    """``JIDOCODER_<NAME>=VALUE`` lines (blank lines, ``#`` comments, ``export`` and quotes
    allowed, as in a systemd EnvironmentFile); a line that is none of these is an error."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read settings_file {path}: {exc.strerror or exc}",
                                   code="invalid_setting", field="settings_file") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip().removeprefix("export ").strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.partition("=")
        if not equals or not name.strip().startswith(ENV_PREFIX):
            raise InvalidArgumentError(f"{path} line {number}: expected JIDOCODER_<NAME>=VALUE, got "
                                       f"{line!r}", code="invalid_setting", field="settings_file")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[name.strip()] = value
    return found


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def settings_table() -> str:
    """The README's settings table, generated from the model."""
    rows = ["| setting | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default if info.default != "" else "see above"
        environment = "(none)" if name in FLAG_ONLY else f"`{ENV_PREFIX}{name.upper()}`"
        rows.append(f"| `{name}` | `{flag_name(name)}` | {environment} | "
                    f"`{default}` | {info.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
