"""De-identification policies per source, loaded from the [deid] TOML table.

A policy is a frozen value: which Annex E options, which pseudonym key, whether the
broker may re-link, and how slide labels and overviews are handled. Sources (calling
AE title, STOW collection) pick a policy. With nothing configured every source gets the
Basic Profile with keyed pseudonyms and labels dropped. The key is never a built-in
default: without a key_file a random 32-byte key is created at
<data_dir>/secrets/deid.key (0600) the first time, and reused after; nodes sharing a
PostgreSQL catalog take it from the catalog instead (one key for all, never one per node).
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping

from deid.errors import PolicyError
from deid.options import Option
from deid.vault import load_public_key

KEY_BYTES = 32
LABEL_RULES = ("drop",)
OVERVIEW_RULES = ("drop", "blank")


@dataclass(frozen=True)
class Policy:
    """How instances from one source are de-identified (or not, when `identified`)."""

    name: str = "basic"
    options: frozenset[Option] = frozenset()
    key: bytes = field(default=b"", repr=False)
    relink: bool = False
    broker_public_key: Path | None = None
    label: str = "drop"
    overview: str = "drop"
    overview_label_area: tuple[int, int, int, int] | None = None
    identified: bool = False
    safe_private: frozenset[tuple[str, int, int]] = frozenset()

    def __post_init__(self) -> None:
        # Accept option names and list areas from hand-built policies; store the canonical forms.
        object.__setattr__(self, "options", frozenset(
            o if isinstance(o, Option) else Option.from_name(str(o)) for o in self.options))
        if self.overview_label_area is not None:
            object.__setattr__(self, "overview_label_area", tuple(int(v) for v in self.overview_label_area))
        if self.broker_public_key is not None:
            object.__setattr__(self, "broker_public_key", Path(self.broker_public_key))
        if self.label not in LABEL_RULES:
            raise PolicyError(f"policy {self.name}: label must be one of {LABEL_RULES}"
                              " (keep labels only with an identified policy)")
        if self.overview not in OVERVIEW_RULES:
            raise PolicyError(f"policy {self.name}: overview must be one of {OVERVIEW_RULES}")
        if self.overview == "blank" and self.overview_label_area is None:
            raise PolicyError(f"policy {self.name}: overview = 'blank' needs overview_label_area")
        if self.overview_label_area is not None:
            area = self.overview_label_area
            if len(area) != 4 or any(int(v) < 0 for v in area) or area[2] <= 0 or area[3] <= 0:
                raise PolicyError(f"policy {self.name}: overview_label_area is [x, y, width, height]")
        if {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= self.options:
            raise PolicyError(f"policy {self.name}: choose full dates or modified dates, not both")
        if self.relink and self.broker_public_key is None:
            raise PolicyError(f"policy {self.name}: relink = true needs broker_public_key")
        if not self.identified and len(self.key) < 16:
            raise PolicyError(f"policy {self.name}: a pseudonym key of at least 16 bytes is required")


@dataclass(frozen=True)
class Policies:
    """All policies and the rules that choose one for an origin."""

    policies: Mapping[str, Policy]
    default: str = "basic"
    by_ae: Mapping[str, str] = field(default_factory=dict)
    by_collection: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Policy:
        return self.policies[name]

    def for_origin(self, ae_title: str | None, collection: str) -> Policy:
        """AE title rule first, then the collection rule, then the collection 'default', then `default`."""
        if ae_title is not None:
            name = self.by_ae.get(ae_title.strip())
            if name is not None:
                return self.policies[name]
        name = self.by_collection.get(collection) or self.by_collection.get("default")
        return self.policies[name or self.default]


def default_key(data_dir: Path) -> bytes:
    """Read, or create once (0600, race-safe), the archive's pseudonym key."""
    path = Path(data_dir) / "secrets" / "deid.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(KEY_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
    return read_key(path)


def read_key(path: Path) -> bytes:
    """A key file holds raw bytes, or hex text (64 hex digits for 32 bytes)."""
    data = Path(path).read_bytes()
    text = data.strip()
    try:
        if len(text) >= 32 and all(c in b"0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text.decode())
    except ValueError:
        pass
    return data


def load_safe_private() -> frozenset[tuple[str, int, int]]:
    """The shipped list of private attributes Retain Safe Private may keep (empty by default)."""
    text = resources.files("deid").joinpath("standard").joinpath("safe_private.json").read_text("utf-8")
    entries = json.loads(text).get("safe", [])
    return frozenset((str(c), int(str(g), 16), int(str(e), 16)) for c, g, e in entries)


def _policy(name: str, spec: Mapping[str, Any], data_dir: Path, shared_key: list[bytes],
            key_source: Callable[[], bytes] | None = None) -> Policy:
    known = {"options", "key_file", "relink", "broker_public_key", "label", "overview",
             "overview_label_area", "identified"}
    unknown = set(spec) - known
    if unknown:
        raise PolicyError(f"policy {name}: unknown settings {sorted(unknown)}")
    # a string "false" must not read as true: identified = "no" would store patients' names
    identified = _setting(spec, "identified", bool, name, False)
    relink = _setting(spec, "relink", bool, name, False)
    names = _setting(spec, "options", list, name, [])
    if not all(isinstance(o, str) for o in names):
        raise PolicyError(f"policy {name}: options must be a list of option names")
    try:
        options = frozenset(Option.from_name(o) for o in names)
    except ValueError as exc:
        raise PolicyError(f"policy {name}: {exc}") from None
    key_file = _setting(spec, "key_file", str, name, "")
    pub = _setting(spec, "broker_public_key", str, name, "")
    area = _setting(spec, "overview_label_area", list, name, None)
    if area is not None and not all(isinstance(v, int) and not isinstance(v, bool) for v in area):
        raise PolicyError(f"policy {name}: overview_label_area is [x, y, width, height] in whole pixels")
    key = b""
    if not identified:
        if key_file:
            try:
                key = read_key(Path(key_file).expanduser())
            except OSError as exc:
                raise PolicyError(f"policy {name}: key_file {key_file[:200]!r} cannot be read "
                                  f"({exc.strerror or type(exc).__name__})") from None
        else:
            if not shared_key:
                shared_key.append(key_source() if key_source else default_key(data_dir))
            key = shared_key[0]
    if pub and relink:
        try:
            load_public_key(Path(pub))
        except (OSError, ValueError) as exc:
            raise PolicyError(f"policy {name}: cannot read broker_public_key ({type(exc).__name__})") from None
    return Policy(
        name=name,
        options=options,
        key=key,
        relink=relink,
        broker_public_key=Path(pub) if pub else None,
        label=_setting(spec, "label", str, name, "drop"),
        overview=_setting(spec, "overview", str, name, "drop"),
        overview_label_area=tuple(area) if area is not None else None,  # type: ignore[arg-type]
        identified=identified,
        safe_private=load_safe_private() if Option.RETAIN_SAFE_PRIVATE in options else frozenset(),
    )


_KINDS = {bool: "true or false", str: "a string", list: "an array"}


def _setting(spec: Mapping[str, Any], key: str, kind: type, name: str, default: Any) -> Any:
    """``spec[key]``, which must be of ``kind`` (a boolean is not an integer here); ``default`` when absent."""
    if key not in spec:
        return default
    value = spec[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise PolicyError(f"policy {name}: {key} must be {_KINDS[kind]}")
    return value


def _names(sources: Mapping[str, Any], key: str) -> dict[str, str]:
    """``[deid.sources.<key>]``: source -> policy name, both strings."""
    table = sources.get(key) or {}
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise PolicyError(f"[deid.sources] {key} must be a table of policy names ({key} = {{ NAME = \"policy\" }})")
    return table


def load_policies(section: Mapping[str, Any] | None, data_dir: Path,
                  key_source: Callable[[], bytes] | None = None) -> Policies:
    """Build the policies from the parsed [deid] table (may be empty or None).

    ``key_source`` gives the pseudonym key of policies without a key_file (default: the
    data directory's key file); nodes sharing a catalog pass the catalog's shared key, so
    every node maps an identifier to the same pseudonym."""
    section = dict(section or {})
    shared_key: list[bytes] = []
    specs = section.get("policies") or {}
    if not isinstance(specs, dict) or not all(isinstance(spec, dict) for spec in specs.values()):
        raise PolicyError("[deid] policies must be tables, one per policy ([deid.policies.NAME])")
    if not specs:
        specs = {"basic": {}}
    policies = {name: _policy(name, spec, Path(data_dir), shared_key, key_source) for name, spec in specs.items()}
    default = section.get("default", "basic" if "basic" in policies else next(iter(policies)))
    sources = section.get("sources") or {}
    if not isinstance(default, str) or not isinstance(sources, dict):
        raise PolicyError("[deid] default must be a policy name and sources a table ([deid.sources])")
    by_ae = {k.strip(): v for k, v in _names(sources, "ae").items()}
    by_collection = _names(sources, "collection")
    for ref in [default, *by_ae.values(), *by_collection.values()]:
        if ref not in policies:
            raise PolicyError(f"[deid] refers to undefined policy {ref!r}")
    return Policies(policies=policies, default=default, by_ae=by_ae, by_collection=by_collection)
