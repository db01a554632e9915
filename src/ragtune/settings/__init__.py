"""Configuration as data: defaults, overridden by ``ragtune.toml``, then by ``RAGTUNE_*`` variables,
then by keyword arguments.

A ``Settings`` holds the project's place (``data_dir``, ``database_url``, ``cache_dir``,
``default_collection``) and one section per layer (``sections.py``), read as
``settings.retrieval.candidates``:

======================  ==============================  ======================================
where                   ragtune.toml                    environment
======================  ==============================  ======================================
the project             ``data_dir = ".ragtune"``       ``RAGTUNE_DATA_DIR``
a section's field       ``[retrieval]``                 ``RAGTUNE_RETRIEVAL_CANDIDATES``
                        ``candidates = 50``             (``RAGTUNE_<SECTION>_<FIELD>``)
======================  ==============================  ======================================

``ragtune.toml`` is read from the working directory, or from the file ``RAGTUNE_CONFIG`` names; its
keys may also sit under a ``[ragtune]`` table (``[ragtune.retrieval]``). A key of the old flat
layout (``candidates = 50`` at the top) is refused with its new place named; so is an old flat
variable (``RAGTUNE_CANDIDATES``), and a ``RAGTUNE_<SECTION>_...`` variable that names no field of
its section. Other ``RAGTUNE_*`` variables (``RAGTUNE_TEST_DATABASE_URL``...) are not settings and
are left alone.

Keyword arguments (``Settings.load``, ``Settings.of``, ``settings.replace``, ``ragtune.open``) name a
project field, a section with a section object (the whole section) or a mapping of some of its
fields (``retrieval={"candidates": 50}``), or a section's field alone (``candidates=50``): field
names are unique across sections, and a name two sections shared would be refused as ambiguous.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.errors import ConfigError
from ragtune.settings.gates import DEFAULT_GATES, Gate, GateBound, parse_gates
from ragtune.settings.sections import (
    BM25_STATISTICS,
    CONVERSATION_METHODS,
    FUSION_METHODS,
    SEARCH_MODES,
    SECTIONS,
    GenerationSettings,
    GovernanceSettings,
    IngestSettings,
    ObservabilitySettings,
    RetrievalSettings,
    ServerSettings,
    StoreSettings,
    TrainingSettings,
    check,
    typed,
)

__all__ = [
    "BM25_STATISTICS",
    "CONVERSATION_METHODS",
    "DEFAULT_GATES",
    "FUSION_METHODS",
    "SEARCH_MODES",
    "SECTIONS",
    "Gate",
    "GateBound",
    "GenerationSettings",
    "GovernanceSettings",
    "IngestSettings",
    "ObservabilitySettings",
    "RetrievalSettings",
    "ServerSettings",
    "Settings",
    "StoreSettings",
    "TrainingSettings",
    "parse_gates",
    "read_toml",
]

PROJECT_FIELDS = ("data_dir", "database_url", "cache_dir", "default_collection")
SECRET_FIELDS = frozenset({"database_url"})
ENV_PREFIX = "RAGTUNE_"
NOT_SETTINGS = frozenset({"RAGTUNE_CONFIG"})  # read by Settings.load itself


@dataclass(frozen=True)
class Settings:
    # Where the project lives: the embedded server's data folder, or an external PostgreSQL (with
    # pgvector) instead; downloaded models and packages; the collection used when none is named.
    data_dir: Path = Path(".ragtune")
    database_url: str | None = None
    cache_dir: Path | None = None
    default_collection: str = "default"
    store: StoreSettings = field(default_factory=StoreSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    governance: GovernanceSettings = field(default_factory=GovernanceSettings)

    def __post_init__(self) -> None:
        typed(self, "", only=PROJECT_FIELDS)
        check(self, [("default_collection", bool(self.default_collection.strip()), "a collection name")], "")
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"invalid setting {name}={getattr(self, name)!r}: expected a {cls.__name__} "
                                  f"(Settings.of({name}={{...}}) takes a mapping)")

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """The defaults with ``values`` on top (keywords as the module docstring says); no file or
        environment is read: for tests and scripts that want exactly these settings."""
        return cls().replace(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (keywords as the module docstring says), validated again."""
        project, whole, partial = _keywords(changes)
        new: dict[str, Any] = dict(project)
        for name in set(whole) | set(partial):
            base = whole.get(name, getattr(self, name))
            new[name] = dataclasses.replace(base, **partial[name]) if name in partial else base
        return dataclasses.replace(self, **new)

    @property
    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        env = os.environ.get("RAGTUNE_CACHE_DIR")
        if env:
            return Path(env)
        import platformdirs

        return Path(platformdirs.user_cache_dir("ragtune"))

    def public_dict(self) -> dict[str, Any]:
        """Everything but secrets, by section, for ``ragtune config show``."""
        out: dict[str, Any] = {name: _shown(name, getattr(self, name)) for name in PROJECT_FIELDS}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: _shown(f.name, getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Defaults < ``ragtune.toml`` < ``RAGTUNE_*`` variables < ``overrides`` (a ``None`` override
        is no override: the CLI passes its unset options)."""
        project: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}

        def add(layer: tuple[dict[str, Any], dict[str, dict[str, Any]]]) -> None:
            project.update(layer[0])
            for name, values in layer[1].items():
                sections[name].update(values)

        path = config_file or (Path(os.environ["RAGTUNE_CONFIG"]) if "RAGTUNE_CONFIG" in os.environ else None)
        if path is None and Path("ragtune.toml").is_file():
            path = Path("ragtune.toml")
        if path is not None:
            add(_from_toml(path))
        add(_from_environment(os.environ))
        given = {k: ({n: x for n, x in v.items() if x is not None} if isinstance(v, Mapping) else v)
                 for k, v in overrides.items() if v is not None}
        top, whole, partial = _keywords(given)
        for name, section in whole.items():  # a section object replaces what the file and environment said
            sections[name] = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        add((top, partial))
        # Built once all sources are in, so a rule across fields sees the final values.
        return cls(**project, **{name: SECTIONS[name](**values) for name, values in sections.items()})


# -- the three sources and their rules ---------------------------------------------------------------------
def _fields(section: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(SECTIONS[section]))


_OWNERS: dict[str, list[str]] = {}  # field name -> the sections that have one
for _section in SECTIONS:
    for _name in _fields(_section):
        _OWNERS.setdefault(_name, []).append(_section)
del _section, _name
# A field alone names its section's field when no other section has one of that name.
_SHORTHAND = {name: owners[0] for name, owners in _OWNERS.items() if len(owners) == 1
              and name not in PROJECT_FIELDS and name not in SECTIONS}
# The flat names of before the sections (every field, and the server's and generation's prefixed ones).
_FLAT: dict[str, tuple[str, str]] = {name: (section, name) for section in SECTIONS for name in _fields(section)}
_FLAT.update({f"server_{name}": ("server", name) for name in _fields("server")})
_FLAT.update({"generation_timeout": ("generation", "timeout"), "generation_retries": ("generation", "retries")})


def env_name(section: str | None, name: str) -> str:
    """The environment variable of a setting: ``RAGTUNE_<SECTION>_<FIELD>``, or ``RAGTUNE_<FIELD>``
    for the project's fields."""
    return f"{ENV_PREFIX}{f'{section}_' if section else ''}{name}".upper()


def _from_toml(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    raw = read_toml(path)
    table = raw["ragtune"] if isinstance(raw.get("ragtune"), dict) else raw
    project: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        if key in PROJECT_FIELDS:
            project[key] = value
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{key}] must be a table of settings, not {key} = {value!r}")
            for name in value:
                if name not in _fields(key):
                    raise ConfigError(f"{path}: unknown setting [{key}] {name}; {_valid(key, name)}")
            sections[key] = dict(value)
        elif key in _FLAT:
            section, name = _FLAT[key]
            where = f"a [{section}.{name}] table" if isinstance(value, dict) else f"[{section}] {name}"
            raise ConfigError(f"{path}: setting {key!r} moved: write it as {where}")
        else:
            raise ConfigError(f"{path}: unknown setting {key!r}{_closest(key)}")
    return project, sections


def _from_environment(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    project: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for variable, value in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or variable in NOT_SETTINGS:
            continue
        key = variable.removeprefix(ENV_PREFIX).lower()
        section = next((s for s in SECTIONS if key.startswith(f"{s}_")), None)
        if key in PROJECT_FIELDS:
            if value != "":
                project[key] = value
        elif section is not None:
            name = key.removeprefix(f"{section}_")
            if name not in _fields(section):
                raise ConfigError(f"environment variable {variable} names no setting of [{section}]; "
                                  f"{_valid(section, name, env=True)}")
            if value != "":
                sections.setdefault(section, {})[name] = value
        elif key in _FLAT:
            new_section, name = _FLAT[key]
            raise ConfigError(f"environment variable {variable} is no longer read: the setting moved to "
                              f"[{new_section}] {name}; set {env_name(new_section, name)} instead")
        # any other RAGTUNE_* variable (RAGTUNE_TEST_DATABASE_URL...) is not a setting
    return project, sections


def _keywords(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    """Keyword settings as (project fields, whole sections, some fields of sections)."""
    project: dict[str, Any] = {}
    whole: dict[str, Any] = {}
    partial: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key in PROJECT_FIELDS:
            project[key] = value
        elif key in SECTIONS:
            if isinstance(value, SECTIONS[key]):
                whole[key] = value
            elif isinstance(value, Mapping):
                for name in value:
                    if name not in _fields(key):
                        raise ConfigError(f"unknown setting {key}.{name}; {_valid(key, name)}")
                partial.setdefault(key, {}).update(value)
            else:
                raise ConfigError(f"invalid setting {key}={value!r}: expected a {SECTIONS[key].__name__} "
                                  f"or a mapping of its fields")
        elif key in _SHORTHAND:
            partial.setdefault(_SHORTHAND[key], {})[key] = value
        elif key in _OWNERS:
            raise ConfigError(f"setting {key} is ambiguous: sections {', '.join(_OWNERS[key])} have one; "
                              f"pass {_OWNERS[key][0]}={{{key!r}: ...}}")
        elif key in _FLAT:
            section, name = _FLAT[key]
            raise ConfigError(f"setting {key} moved to [{section}] {name}: pass {section}={{{name!r}: ...}}")
        else:
            raise ConfigError(f"unknown setting {key}{_closest(key)}")
    return project, whole, partial


def _valid(section: str, name: str, *, env: bool = False) -> str:
    names = _fields(section)
    close = difflib.get_close_matches(name, names, n=1)
    if close:
        return f"did you mean {env_name(section, close[0]) if env else close[0]}?"
    return f"[{section}] has {', '.join(names)}"


def _closest(key: str) -> str:
    places = {name: name for name in PROJECT_FIELDS} | {s: f"[{s}]" for s in SECTIONS}
    places |= {old: f"[{section}] {name}" for old, (section, name) in _FLAT.items()}
    close = difflib.get_close_matches(key, list(places), n=1)
    return f"; did you mean {places[close[0]]}?" if close else ""


def _shown(name: str, value: Any) -> Any:
    if name in SECRET_FIELDS and value:
        return _redact_url(str(value))
    return str(value) if isinstance(value, Path) else value


def read_toml(path: str | Path, *, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing file or bad TOML is a ``ConfigError`` naming the path."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _redact_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
