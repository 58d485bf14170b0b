"""Where the agent's configuration comes from: the file (at a default place per system) and the environment.

The file is the one ``--config`` names, else the one ``$SHELFSYNC_AGENT_CONFIG``
names, else the system's default: ``/etc/shelfsync/agent.toml`` (Linux and other
Unix), ``%ProgramData%\\shelfsync\\agent.toml`` (Windows). A few common settings and
every secret can also be given by ``SHELFSYNC_AGENT_*`` environment variables
(``ENVIRONMENT``), which win over the file: a service manager can hand the token
over without writing it into the file. A set but empty variable counts as not
set; an unknown ``SHELFSYNC_AGENT_*`` variable is a typo and stops the agent, as
an unknown key in the file does. Without a file at the default place the
environment alone may configure the agent (a container, a Windows service).
``data_dir`` defaults to the file's directory, except in /etc/shelfsync: there
it is /var/lib/shelfsync-agent (``default_data_dir``).

docs/agent.md ("Environment") lists every variable; a test checks.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

from agent.errors import ConfigError
from protocol.values import path_problem

CONFIG_ENV = "SHELFSYNC_AGENT_CONFIG"
LOG_LEVEL_ENV = "SHELFSYNC_AGENT_LOG_LEVEL"
ENV_PREFIX = "SHELFSYNC_AGENT_"
POSIX_CONFIG = Path("/etc/shelfsync/agent.toml")
POSIX_DATA_DIR = Path("/var/lib/shelfsync-agent")  # the data of a configuration in /etc/shelfsync
WINDOWS_PROGRAM_DATA = r"C:\ProgramData"  # when %ProgramData% is not set

# The environment variable → the [agent] key it sets (docs/agent.md, "Environment").
ENVIRONMENT: Mapping[str, str] = {
    "SHELFSYNC_AGENT_ID": "id",
    "SHELFSYNC_AGENT_LOCATION": "location",
    "SHELFSYNC_AGENT_HUB_URL": "hub_url",
    "SHELFSYNC_AGENT_TOKEN": "token",
    "SHELFSYNC_AGENT_TOKEN_FILE": "token_file",
    "SHELFSYNC_AGENT_CA_FILE": "ca_file",
    "SHELFSYNC_AGENT_DATA_DIR": "data_dir",
    "SHELFSYNC_AGENT_OUTBOX": "outbox",
}
# Variables read by the command line rather than the [agent] table.
COMMAND_ENVIRONMENT = (CONFIG_ENV, LOG_LEVEL_ENV)
PATH_KEYS = frozenset({"token_file", "ca_file", "data_dir", "outbox"})
SECRET_KEYS = ("token", "token_file")  # one of them wins as a pair: an env token replaces the file's token_file


def default_config_path(*, platform: str | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """This system's configuration file when neither ``--config`` nor ``$SHELFSYNC_AGENT_CONFIG`` names one."""
    platform = sys.platform if platform is None else platform
    environ = os.environ if environ is None else environ
    if platform == "win32":
        base = environ.get("ProgramData") or environ.get("PROGRAMDATA") or WINDOWS_PROGRAM_DATA
        return Path(str(PureWindowsPath(base, "shelfsync", "agent.toml")))
    return POSIX_CONFIG


def default_data_dir(config_path: Path) -> Path:
    """Where the outbox lives when ``data_dir`` is not set: the configuration file's directory, except for a
    file in /etc/shelfsync, which is for configuration only (and read-only to a hardened service):
    /var/lib/shelfsync-agent, the state directory of the systemd unit (packaging/systemd/)."""
    return POSIX_DATA_DIR if config_path.parent == POSIX_CONFIG.parent else config_path.parent


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """The configuration file to read, and whether someone named it (a named file must exist)."""

    path: Path
    named: bool


def config_source(
    explicit: str | os.PathLike[str] | None, environ: Mapping[str, str], *, platform: str | None = None
) -> ConfigSource:
    """``--config``, else ``$SHELFSYNC_AGENT_CONFIG``, else the system's default."""
    if explicit is not None:
        return ConfigSource(Path(explicit), named=True)
    if named := environ.get(CONFIG_ENV, "").strip():
        return ConfigSource(Path(named), named=True)
    return ConfigSource(default_config_path(platform=platform, environ=environ), named=False)


@dataclass(frozen=True, slots=True)
class Overrides:
    """The [agent] values the environment sets (paths already absolute), and which variable set each."""

    values: Mapping[str, str]
    variables: Mapping[str, str]  # [agent] key → the variable it came from

    def apply(self, table: Any) -> Any:
        """The file's [agent] table with these values put in (a non-table is returned as is, to be refused)."""
        if not self.values or not isinstance(table, Mapping):
            return table
        merged = dict(table)
        if any(key in self.values for key in SECRET_KEYS):
            for key in SECRET_KEYS:
                merged.pop(key, None)
        merged.update(self.values)
        return merged


def environment_overrides(environ: Mapping[str, str]) -> Overrides:
    """The [agent] settings of ``SHELFSYNC_AGENT_*`` variables; ``ConfigError`` names an unknown one."""
    values: dict[str, str] = {}
    variables: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in COMMAND_ENVIRONMENT:
            continue
        key = ENVIRONMENT.get(name)
        if key is None:
            known = ", ".join([*COMMAND_ENVIRONMENT, *ENVIRONMENT])
            raise ConfigError(f"unknown environment variable {name}; the agent's are {known}")
        value = environ[name].strip()
        if not value:
            continue  # set but empty: as if not set
        if key in PATH_KEYS and (problem := path_problem(value)):
            raise ConfigError(f"{name} (the environment's [agent] {key}) {problem}")
        values[key] = str(Path(value).expanduser().absolute()) if key in PATH_KEYS else value
        variables[key] = name
    if "token" in values and "token_file" in values:
        raise ConfigError(
            "SHELFSYNC_AGENT_TOKEN and SHELFSYNC_AGENT_TOKEN_FILE are both set; keep one (the token, or the file"
            " that holds it)"
        )
    return Overrides(values, variables)
