"""Configuration: a frozen dataclass built from config/default.toml, a user TOML file and flags.

The raw tables of sections owned by other packages (``deid``, ``index``) are kept
as dicts and handed to those packages, which validate them themselves.
"""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "config" / "default.toml"


class ConfigError(ValueError):
    """A configuration file or option that cannot be used; the message says which field."""


@dataclasses.dataclass(frozen=True)
class RemoteAE:
    ae_title: str
    host: str
    port: int
    #: Associations to it over TLS ([tls] cert_file/key_file as our certificate, ca_file checks its certificate).
    tls: bool = False


@dataclasses.dataclass(frozen=True)
class PeerRule:
    ae_title: str
    allow: frozenset[str]
    #: With authentication on, what the peer may do without user identity ("name" or "name:role").
    collections: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DimseSettings:
    enabled: bool = True
    port: int = 11112
    ae_title: str = "SLIDEARCHIVE"
    max_pdu: int = 262144
    network_timeout: float = 60
    acse_timeout: float = 30
    dimse_timeout: float = 60
    maximum_associations: int = 32
    remotes: tuple[RemoteAE, ...] = ()
    peers: tuple[PeerRule, ...] = ()


@dataclasses.dataclass(frozen=True)
class TlsSettings:
    """TLS for HTTP and DIMSE (PS3.15 Annex B secure transport): one server certificate for both."""
    cert_file: str = ""
    key_file: str = ""
    #: CAs whose client certificates are accepted (DIMSE and HTTP); required with require_client_cert.
    ca_file: str = ""
    require_client_cert: bool = False
    min_version: str = "1.2"
    #: Serve HTTPS on [server] http_port.
    http: bool = False
    #: "off" (plain DIMSE only), "separate" (TLS on dimse_port beside the plain port) or "only" (TLS on [dimse] port).
    dimse: str = "off"
    dimse_port: int = 2762

    @property
    def any(self) -> bool:
        return self.http or self.dimse != "off"


@dataclasses.dataclass(frozen=True)
class SyslogSettings:
    """An audit record repository reached by RFC 5424 syslog over TLS (RFC 5425)."""
    host: str
    port: int = 6514
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    retry_seconds: float = 5


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    enabled: bool = True
    #: Relative to the data directory unless absolute.
    directory: str = "audit"
    source_id: str = ""
    enterprise_site_id: str = ""
    queue_size: int = 10000
    fsync: bool = True
    rotate_bytes: int = 64 * 1024 * 1024
    frame_interval: float = 60
    syslog: SyslogSettings | None = None

    def directory_in(self, data_dir: Path) -> Path:
        return data_dir / Path(self.directory).expanduser()


@dataclasses.dataclass(frozen=True)
class OidcIssuer:
    """A trusted OpenID Connect issuer of JWT access tokens (Keycloak realm, LS Login, ...)."""
    issuer: str
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    #: Where the discovery document is ("" = <issuer>/.well-known/openid-configuration).
    discovery_url: str = ""
    #: The claim listing collections: "name" (read) or "name:role"; "*:admin" makes an administrator.
    collections_claim: str = "collections"
    #: Whether GA4GH Passport visas in the token (ga4gh_passport_v1) grant collections.
    passports: bool = True


@dataclasses.dataclass(frozen=True)
class VisaIssuer:
    """A GA4GH Passport visa issuer whose ControlledAccessGrants visas grant collections."""
    issuer: str
    #: JWKS URLs a visa's ``jku`` header may name; a visa naming any other is ignored.
    jku: tuple[str, ...]
    #: visa ``value`` (e.g. a dataset URL) -> collection.
    collections: tuple[tuple[str, str], ...]
    roles: tuple[str, ...] = ("read",)


@dataclasses.dataclass(frozen=True)
class AuthSettings:
    #: False: every request acts as an administrator; allowed only when the server binds loopback.
    enabled: bool = True
    #: Requests without credentials may read the public collections (and nothing else).
    anonymous: bool = False
    public_collections: tuple[str, ...] = ()
    #: Origins a browser viewer may call from when authentication is on (CORS); "*" only when off.
    cors_origins: tuple[str, ...] = ()
    #: A verified token or key is trusted this long (at most until it expires): revocation delay.
    token_cache_seconds: float = 60
    #: Print one administrator API key on the first start of an archive that has none.
    first_admin_key: bool = True
    issuers: tuple[OidcIssuer, ...] = ()
    visa_issuers: tuple[VisaIssuer, ...] = ()


@dataclasses.dataclass(frozen=True)
class CatalogSettings:
    #: "": the SQLite file <data_dir>/catalog.sqlite; "postgresql://user@host:port/db": a catalog nodes share.
    url: str = ""
    #: Connections per process to a PostgreSQL catalog, and how long a request waits for one.
    pool_size: int = 8
    pool_timeout: float = 5.0


@dataclasses.dataclass(frozen=True)
class LoggingSettings:
    """Where the server's log and access log go (``[logging]``); see archive/logs.py."""

    level: str = "warning"  # debug | info | warning | error
    file: str = ""  # empty: standard error; relative paths are under the data directory
    access_log: bool = True  # one line per HTTP request: method, path, query keys, status, bytes, time
    format: str = "text"  # text | json (one JSON object per line)

    def path(self, data_dir: Path) -> Path | None:
        return data_dir / Path(self.file).expanduser() if self.file else None


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclasses.dataclass(frozen=True)
class DatasetSettings:
    """Dataset releases (``[datasets]``; docs/datasets.md)."""

    #: A DataCite DOI prefix (``10.1234``): releases are named ``10.1234/slidearchive.<id>.v<n>``.
    #: Empty: ``urn:slidearchive:dataset:<id>:v<n>``, resolvable only through this archive.
    doi_prefix: str = ""
    #: The publisher named in citations, JSON-LD and DataCite metadata.
    publisher: str = "slidearchive"
    #: PEM private key (EC P-256 or RSA, relative to the data directory) that signs GA4GH
    #: ControlledAccessGrants visas of dataset grants; empty: one generated in the secrets folder.
    visa_key: str = ""
    #: The visas' ``iss``; empty: this archive's base URL as the client reaches it.
    visa_issuer: str = ""
    #: A visa is valid this long (and never beyond its grant's expiry).
    visa_lifetime_seconds: int = 3600


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """``GET /metrics`` (Prometheus text format; archive.metrics): who may scrape it."""

    enabled: bool = True
    #: A file holding a scrape token (Prometheus' credentials_file); empty: administrators only.
    #: Relative paths are under the data directory.
    token_file: str = ""

    def token_path(self, data_dir: Path) -> Path | None:
        return data_dir / Path(self.token_file).expanduser() if self.token_file else None


@dataclasses.dataclass(frozen=True)
class WebSettings:
    """The web app's login (``[web]``): the browser logs in with authorization code + PKCE."""

    #: The [[auth.issuer]] the login page uses ("" = the first one; no issuer = no login button).
    login_issuer: str = ""
    #: The public client registered at that issuer for the web app ("" = the issuer's first audience).
    client_id: str = ""
    scope: str = "openid"

    def login(self, auth: AuthSettings) -> dict[str, str] | None:
        """What the pages need to log in (issuer, client_id, scope), or None when there is no login."""
        if not auth.enabled or not auth.issuers:
            return None
        issuer = next(i for i in auth.issuers if i.issuer == (self.login_issuer or auth.issuers[0].issuer))
        return {"issuer": issuer.issuer, "client_id": self.client_id or issuer.audience[0], "scope": self.scope}


@dataclasses.dataclass(frozen=True)
class StorageSettings:
    """Where stored instances live (``[storage]``): the data directory, or an S3 bucket."""

    #: "" = ``<data_dir>/storage``; ``s3://bucket/prefix`` = objects in that bucket (endpoint, region
    #: and credentials from the AWS_* environment variables).
    url: str = ""
    #: S3: seconds one request may take (retries included) before the client gets a 503.
    timeout: float = 30.0
    #: S3: multipart upload part size and parts in flight per upload (memory: their product).
    part_size_mb: int = 16
    upload_concurrency: int = 2
    #: S3: in-node cache of hot frames, MB per process (0 = none).
    frame_cache_mb: int = 64
    #: S3 with a cache: KB of the frames after a missed frame read into the cache with it (0 = none).
    frame_readahead_kb: int = 128
    #: S3: seconds a deleted instance's object stays, for the retrieves already reading it
    #: (archive/storage/removals.py). Local files are removed at once.
    removal_delay: float = 300.0

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")


def s3_location(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes); ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError("must be empty (the data directory) or look like s3://bucket/prefix")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError("must be s3://bucket/prefix, without credentials, query or fragment "
                         "(credentials come from the AWS_* environment variables)")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parts.netloc):
        raise ValueError(f"bucket name {parts.netloc[:70]!r} is not a valid S3 bucket name")
    return parts.netloc, parts.path.strip("/")


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./slidearchive-data")
    host: str = "127.0.0.1"
    http_port: int = 8080
    public_base_url: str = ""
    workers: int = 2
    threads: int = 4
    default_collection: str = "default"
    #: Seconds a SIGTERM/SIGINT gives in-flight STOW-RS and C-STORE transfers to finish.
    stop_timeout: float = 30.0
    #: Below this much free space in the storage area, /health/ready answers 503.
    min_free_space_mb: int = 256
    dimse: DimseSettings = DimseSettings()
    index: dict[str, Any] = dataclasses.field(default_factory=dict)
    deid: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: AI results whose referenced slide is absent: "refuse" (0xA900 / 409) or "warn" (stored, 0xB007).
    dangling_references: str = "refuse"
    audit: AuditSettings = AuditSettings()
    tls: TlsSettings = TlsSettings()
    logging: LoggingSettings = LoggingSettings()
    #: Reverse proxies (addresses or networks) whose X-Forwarded-* headers are believed.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    auth: AuthSettings = AuthSettings()
    catalog: CatalogSettings = CatalogSettings()
    datasets: DatasetSettings = DatasetSettings()
    metrics: MetricsSettings = MetricsSettings()
    web: WebSettings = WebSettings()
    storage: StorageSettings = StorageSettings()

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    def is_trusted_proxy(self, address: str) -> bool:
        return _in_networks(address, self.trusted_proxies)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    @property
    def catalog_location(self) -> Path | str:
        """Where the catalog is: the ``[catalog] url``, else the SQLite file in the data directory."""
        return self.catalog.url or self.catalog_path

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"


@functools.lru_cache(maxsize=64)
def _networks(entries: tuple[str, ...]) -> tuple:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


@functools.lru_cache(maxsize=4096)
def _in_networks(address: str, entries: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(entries) if net.version == ip.version)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"configuration file {path} is not valid TOML: {e}") from None


def _typed(table: dict, key: str, kind: type, where: str) -> Any:
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"[{where}] {key} must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_remote(text: str) -> RemoteAE:
    """Parse ``AE=HOST:PORT`` as given to ``--remote``."""
    try:
        ae, address = text.split("=", 1)
        host, port = address.rsplit(":", 1)
        return RemoteAE(_ae_title(ae), host, _port(int(port), "--remote"))
    except ValueError as e:
        raise ConfigError(f"--remote {text!r}: expected AE=HOST:PORT ({e})") from None


def _ae_title(value: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"invalid AE title: a string of 1-16 printable characters, got {_kind(value)}")
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise ConfigError(f"invalid AE title {value!r}: 1-16 printable characters, no backslash")
    return value.strip()


def _port(value: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{where}: port {value} out of range 0-65535")
    return value


def _dimse(table: dict) -> DimseSettings:
    known = {f.name for f in dataclasses.fields(DimseSettings)} - {"remotes", "peers"} | {"remote", "peer"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[dimse] unknown keys: {', '.join(sorted(unknown))}")
    remotes = []
    for i, r in enumerate(_entries(table, "remote", "dimse.remote")):
        try:
            if not isinstance(r.get("tls", False), bool):
                raise ValueError("tls must be true or false")
            remotes.append(RemoteAE(_ae_title(r["ae_title"]), str(r["host"]), _port(int(r["port"]), "[[dimse.remote]]"),
                                    r.get("tls", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"[[dimse.remote]] entry {i + 1}: needs ae_title, host and port, "
                              f"tls true or false ({e})") from None
    peers = []
    for i, p in enumerate(_entries(table, "peer", "dimse.peer")):
        allow = frozenset(_strings(p, "allow", f"[[dimse.peer]] entry {i + 1}") if "allow" in p
                          else ("store", "query", "retrieve"))
        if not allow <= {"store", "query", "retrieve"} or "ae_title" not in p:
            raise ConfigError(f"[[dimse.peer]] entry {i + 1}: needs ae_title and allow within store/query/retrieve")
        peers.append(PeerRule(_ae_title(p["ae_title"]), allow,
                              _strings(p, "collections", f"[[dimse.peer]] entry {i + 1}")))
    kinds = {"enabled": bool, "port": int, "ae_title": str, "max_pdu": int, "network_timeout": float,
             "acse_timeout": float, "dimse_timeout": float, "maximum_associations": int}
    values = {k: _typed(table, k, kinds[k], "dimse") for k in kinds if k in table}
    if "ae_title" in values:
        values["ae_title"] = _ae_title(values["ae_title"])
    if "port" in values:
        _port(values["port"], "[dimse] port")
    return DimseSettings(**values, remotes=tuple(remotes), peers=tuple(peers))


def _proxies(entries: list) -> tuple[str, ...]:
    for entry in entries:
        try:
            ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            raise ConfigError(f"[server] trusted_proxies: {entry!r} is not an IP address or network") from None
    return tuple(str(e) for e in entries)


def _audit(table: dict) -> AuditSettings:
    kinds = {"enabled": bool, "directory": str, "source_id": str, "enterprise_site_id": str, "queue_size": int,
             "fsync": bool, "rotate_bytes": int, "frame_interval": float}
    unknown = set(table) - set(kinds) - {"syslog"}
    if unknown:
        raise ConfigError(f"[audit] unknown keys: {', '.join(sorted(unknown))}")
    values = {k: _typed(table, k, kinds[k], "audit") for k in kinds if k in table}
    if values.get("queue_size", 1) < 1 or values.get("rotate_bytes", 1) < 4096 or values.get("frame_interval", 1) <= 0:
        raise ConfigError("[audit] queue_size must be at least 1, rotate_bytes at least 4096, frame_interval above 0")
    syslog = table.get("syslog")
    if syslog is not None and not isinstance(syslog, dict):
        raise ConfigError(f"[audit] syslog must be a table ([audit.syslog]), got {_kind(syslog)}")
    if syslog is not None:
        skinds = {"host": str, "port": int, "ca_file": str, "cert_file": str, "key_file": str, "server_name": str,
                  "retry_seconds": float}
        unknown = set(syslog) - set(skinds)
        if unknown:
            raise ConfigError(f"[audit.syslog] unknown keys: {', '.join(sorted(unknown))}")
        svalues = {k: _typed(syslog, k, skinds[k], "audit.syslog") for k in skinds if k in syslog}
        if not svalues.get("host"):
            raise ConfigError("[audit.syslog] host is required (remove the section to send nothing)")
        if bool(svalues.get("cert_file")) != bool(svalues.get("key_file")):
            raise ConfigError("[audit.syslog] cert_file and key_file go together")
        _port(svalues.get("port", 6514), "[audit.syslog] port")
        for key in ("ca_file", "cert_file", "key_file"):
            if svalues.get(key) and not Path(svalues[key]).expanduser().is_file():
                raise ConfigError(f"[audit.syslog] {key}: file not found: {svalues[key]}")
        values["syslog"] = SyslogSettings(**svalues)
    return AuditSettings(**values)


def _tls(table: dict, outgoing: bool = False) -> TlsSettings:
    """[tls]; ``outgoing``: a [[dimse.remote]] is reached over TLS, which needs our certificate and the CAs."""
    kinds = {"cert_file": str, "key_file": str, "ca_file": str, "require_client_cert": bool, "min_version": str,
             "http": bool, "dimse": str, "dimse_port": int}
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigError(f"[tls] unknown keys: {', '.join(sorted(unknown))}")
    tls = TlsSettings(**{k: _typed(table, k, kinds[k], "tls") for k in kinds if k in table})
    if tls.dimse not in ("off", "separate", "only"):
        raise ConfigError('[tls] dimse must be "off", "separate" or "only"')
    if tls.min_version not in ("1.2", "1.3"):
        raise ConfigError('[tls] min_version must be "1.2" or "1.3" (PS3.15 Annex B: TLS 1.2 or newer)')
    _port(tls.dimse_port, "[tls] dimse_port")
    if tls.require_client_cert and not tls.ca_file:
        raise ConfigError("[tls] require_client_cert needs ca_file (the CAs whose client certificates count)")
    if outgoing and not (tls.cert_file and tls.key_file and tls.ca_file):
        raise ConfigError("[[dimse.remote]] with tls = true needs [tls] cert_file and key_file (the archive's "
                          "certificate) and ca_file (the CAs that signed the destination's)")
    if tls.any or outgoing:
        for key in ("cert_file", "key_file") + (("ca_file",) if tls.ca_file else ()):
            value = getattr(tls, key)
            if not value:
                raise ConfigError(f"[tls] {key} is required when TLS is on (http = true or dimse != \"off\")")
            if not Path(value).expanduser().is_file():
                raise ConfigError(f"[tls] {key}: file not found: {value}")
    return tls


def _catalog(table: dict) -> CatalogSettings:
    kinds = {"url": str, "pool_size": int, "pool_timeout": float}
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigError(f"[catalog] unknown keys: {', '.join(sorted(unknown))}")
    settings = CatalogSettings(**{k: _typed(table, k, kinds[k], "catalog") for k in kinds if k in table})
    if settings.url:
        scheme, _, rest = settings.url.partition("://")
        if scheme not in ("postgresql", "postgres") or not rest:
            raise ConfigError('[catalog] url must be "" (SQLite in the data directory) or a '
                              f'"postgresql://user@host:port/database" URL, not {scheme[:20]!r}...')
    if not 1 <= settings.pool_size <= 1000 or not 0 < settings.pool_timeout <= 300:
        raise ConfigError("[catalog] pool_size must be 1-1000 and pool_timeout above 0 and at most 300 seconds")
    return settings


def _logging(table: dict) -> LoggingSettings:
    kinds = {"level": str, "file": str, "access_log": bool, "format": str}
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigError(f"[logging] unknown keys: {', '.join(sorted(unknown))}")
    settings = LoggingSettings(**{k: _typed(table, k, kinds[k], "logging") for k in kinds if k in table})
    if settings.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"[logging] level must be one of {', '.join(LOG_LEVELS)}")
    if settings.format not in ("text", "json"):
        raise ConfigError('[logging] format must be "text" or "json"')
    return dataclasses.replace(settings, level=settings.level.lower())


def _metrics(table: dict, data_dir: Path) -> MetricsSettings:
    kinds = {"enabled": bool, "token_file": str}
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigError(f"[metrics] unknown keys: {', '.join(sorted(unknown))}")
    settings = MetricsSettings(**{k: _typed(table, k, kinds[k], "metrics") for k in kinds if k in table})
    token = settings.token_path(data_dir)
    if token is not None and not token.is_file():
        raise ConfigError(f"[metrics] token_file: file not found: {settings.token_file}")
    return settings


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Defaults, then ``config_file``, then non-None ``overrides`` (from command-line flags).

    Overrides use the Settings field names, plus ``dimse_port``, ``ae_title`` and
    ``remotes`` (a list of RemoteAE) for the DIMSE section.
    """
    raw = _read_toml(DEFAULT_FILE)
    if config_file is not None:
        raw = _merge(raw, _read_toml(Path(config_file)))
    unknown = set(raw) - {"server", "dimse", "index", "deid", "results", "audit", "tls", "auth", "logging",
                         "datasets", "metrics", "web", "catalog", "storage"}
    if unknown:
        raise ConfigError(f"unknown configuration sections: {', '.join(sorted(unknown))}")
    for name, section in raw.items():  # the parts below read every section as a table
        if not isinstance(section, dict):
            raise ConfigError(f"{name} must be a table ([{name}]), got {_kind(section)}")
    server = raw.get("server", {})
    kinds = {"data_dir": str, "host": str, "http_port": int, "public_base_url": str,
             "workers": int, "threads": int, "default_collection": str, "trusted_proxies": list,
             "stop_timeout": float, "min_free_space_mb": int}
    unknown = set(server) - set(kinds)
    if unknown:
        raise ConfigError(f"[server] unknown keys: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {k: _typed(server, k, kinds[k], "server") for k in kinds if k in server}
    if "trusted_proxies" in values:
        values["trusted_proxies"] = _proxies(values["trusted_proxies"])
    if not 0 < values.get("stop_timeout", 1) <= 3600:
        raise ConfigError("[server] stop_timeout must be above 0 and at most 3600 seconds")
    if values.get("min_free_space_mb", 0) < 0:
        raise ConfigError("[server] min_free_space_mb must not be negative")
    dimse = _dimse(raw.get("dimse", {}))
    o = {k: v for k, v in overrides.items() if v is not None}
    if "dimse_port" in o:
        dimse = dataclasses.replace(dimse, port=_port(o.pop("dimse_port"), "--dimse-port"))
    if "ae_title" in o:
        dimse = dataclasses.replace(dimse, ae_title=_ae_title(o.pop("ae_title")))
    if o.get("remotes"):
        dimse = dataclasses.replace(dimse, remotes=dimse.remotes + tuple(o.pop("remotes")))
    o.pop("remotes", None)
    if "no_dimse" in o:
        dimse = dataclasses.replace(dimse, enabled=not o.pop("no_dimse"))
    values.update(o)
    values["data_dir"] = Path(values.get("data_dir", "./slidearchive-data")).expanduser().resolve()
    _port(values.get("http_port", 8080), "http_port")
    if values.get("workers", 1) < 1 or values.get("threads", 1) < 1:
        raise ConfigError("[server] workers and threads must be at least 1")
    results = raw.get("results", {})
    if set(results) - {"dangling_references"}:
        raise ConfigError(f"[results] unknown keys: {', '.join(sorted(set(results) - {'dangling_references'}))}")
    dangling = results.get("dangling_references", "refuse")
    if dangling not in ("refuse", "warn"):
        raise ConfigError('[results] dangling_references must be "refuse" or "warn"')
    auth = _auth(raw.get("auth", {}))
    if not auth.enabled and not _is_loopback(values.get("host", "127.0.0.1")):
        raise ConfigError("[auth] enabled = false is allowed only when the server binds loopback "
                          f"(host is {values.get('host')}); configure API keys or an OIDC issuer instead")
    return Settings(**values, dimse=dimse, index=raw.get("index", {}), deid=raw.get("deid", {}),
                    dangling_references=dangling, audit=_audit(raw.get("audit", {})), tls=_tls(raw.get("tls", {}), any(r.tls for r in dimse.remotes)),
                    auth=auth, logging=_logging(raw.get("logging", {})), catalog=_catalog(raw.get("catalog", {})), datasets=_datasets(raw.get("datasets", {})),
                    metrics=_metrics(raw.get("metrics", {}), values["data_dir"]),
                    web=_web(raw.get("web", {}), auth),
                    storage=_storage(raw.get("storage", {})))


def _web(table: dict, auth: AuthSettings) -> WebSettings:
    unknown = set(table) - {"login_issuer", "client_id", "scope"}
    if unknown:
        raise ConfigError(f"[web] unknown keys: {', '.join(sorted(unknown))}")
    values = {k: _typed(table, k, str, "web").strip() for k in ("login_issuer", "client_id", "scope") if k in table}
    if values.get("login_issuer"):
        values["login_issuer"] = _url(values["login_issuer"], "web")
        if values["login_issuer"] not in {i.issuer for i in auth.issuers}:
            raise ConfigError(f"[web] login_issuer {values['login_issuer'][:80]!r} is not one of the [[auth.issuer]] "
                              "entries (the archive must trust the tokens the login gives)")
    if "scope" in values and not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*", values["scope"]):
        raise ConfigError("[web] scope must be space-separated OAuth scope names (RFC 6749 3.3), e.g. \"openid\"")
    if values.get("client_id") and not re.fullmatch(r"[\x20-\x7e]{1,200}", values["client_id"]):
        raise ConfigError("[web] client_id must be 1-200 printable ASCII characters")
    return WebSettings(**values)


def _storage(table: dict) -> StorageSettings:
    kinds = {"url": str, "timeout": float, "part_size_mb": int, "upload_concurrency": int, "frame_cache_mb": int,
             "frame_readahead_kb": int, "removal_delay": float}
    unknown = set(table) - set(kinds)
    if unknown:
        raise ConfigError(f"[storage] unknown keys: {', '.join(sorted(unknown))}")
    settings = StorageSettings(**{k: _typed(table, k, kinds[k], "storage") for k in kinds if k in table})
    if settings.url:
        try:
            s3_location(settings.url)
        except ValueError as e:
            raise ConfigError(f"[storage] url: {e}") from None  # the URL itself not echoed: it may hold a secret
    if not 0 < settings.timeout <= 600:
        raise ConfigError("[storage] timeout must be above 0 and at most 600 seconds")
    if not 5 <= settings.part_size_mb <= 5120:
        raise ConfigError("[storage] part_size_mb must be 5-5120 (S3's limits for a multipart part)")
    if not 1 <= settings.upload_concurrency <= 32:
        raise ConfigError("[storage] upload_concurrency must be 1-32")
    if not 0 <= settings.frame_cache_mb <= 65536:
        raise ConfigError("[storage] frame_cache_mb must be 0-65536")
    if not 0 <= settings.frame_readahead_kb <= 16384:
        raise ConfigError("[storage] frame_readahead_kb must be 0-16384")
    if not 0 <= settings.removal_delay <= 86400:
        raise ConfigError("[storage] removal_delay must be 0-86400 seconds")
    return settings


def _datasets(table: dict) -> DatasetSettings:
    unknown = set(table) - {"doi_prefix", "publisher", "visa_key", "visa_issuer", "visa_lifetime_seconds"}
    if unknown:
        raise ConfigError(f"[datasets] unknown keys: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {k: _typed(table, k, str, "datasets").strip()
                              for k in ("doi_prefix", "publisher", "visa_key", "visa_issuer") if k in table}
    if "visa_lifetime_seconds" in table:
        lifetime = _typed(table, "visa_lifetime_seconds", int, "datasets")
        if not 60 <= lifetime <= 30 * 86400:
            raise ConfigError("[datasets] visa_lifetime_seconds must be between 60 and 2592000 (30 days)")
        values["visa_lifetime_seconds"] = lifetime
    if values.get("visa_issuer") and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", values["visa_issuer"]):
        raise ConfigError(f"[datasets] visa_issuer {values['visa_issuer'][:60]!r} is not an http(s) URL")
    if values.get("doi_prefix") and not re.fullmatch(r"10\.[0-9]{4,9}", values["doi_prefix"]):
        raise ConfigError(f"[datasets] doi_prefix {values['doi_prefix'][:40]!r} is not a DOI prefix such as 10.12345")
    if "publisher" in values and not 0 < len(values["publisher"]) <= 200:
        raise ConfigError("[datasets] publisher must be 1-200 characters")
    return DatasetSettings(**values)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _kind(value: Any) -> str:
    """A TOML value's kind, for messages (never the value: it may be a secret)."""
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(value), type(value).__name__)


def _entries(table: dict, key: str, where: str) -> list[dict]:
    """An array of tables (``[[where]]`` entries), each entry a table."""
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise ConfigError(f"{where} must be an array of tables ([[{where}]] entries), got {_kind(value)}")
    return value


def _strings(table: dict, key: str, where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"[{where}] {key} must be a list of non-empty strings")
    return tuple(value)


def _url(value: str, where: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ConfigError(f"[{where}] {value[:80]!r} is not an http(s) URL")
    return value.rstrip("/")


#: Asymmetric signatures only: an HS256 token "signed" with a public key must never verify.
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _auth(table: dict) -> AuthSettings:
    known = {"enabled", "anonymous", "public_collections", "cors_origins", "token_cache_seconds",
             "first_admin_key", "issuer", "visa_issuer"}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[auth] unknown keys: {', '.join(sorted(unknown))}")
    kinds = {"enabled": bool, "anonymous": bool, "token_cache_seconds": float, "first_admin_key": bool}
    values: dict[str, Any] = {k: _typed(table, k, kinds[k], "auth") for k in kinds if k in table}
    if not 0 <= values.get("token_cache_seconds", 60) <= 3600:
        raise ConfigError("[auth] token_cache_seconds must be 0-3600")
    issuers = []
    for i, entry in enumerate(_entries(table, "issuer", "auth.issuer")):
        where = f"[[auth.issuer]] entry {i + 1}"
        extra = set(entry) - {"issuer", "audience", "algorithms", "discovery_url", "collections_claim", "passports"}
        if extra:
            raise ConfigError(f"{where}: unknown keys: {', '.join(sorted(extra))}")
        if not isinstance(entry.get("issuer"), str) or not entry.get("audience"):
            raise ConfigError(f"{where}: needs issuer (a URL) and audience (the archive's client id)")
        algorithms = _strings(entry, "algorithms", where) or OidcIssuer.algorithms
        bad = [a for a in algorithms if a not in ALLOWED_ALGORITHMS]
        if bad:
            raise ConfigError(f"{where}: algorithms {bad} not allowed (asymmetric only: {', '.join(ALLOWED_ALGORITHMS)})")
        issuers.append(OidcIssuer(
            issuer=_url(entry["issuer"], where), audience=_strings(entry, "audience", where), algorithms=algorithms,
            discovery_url=_url(entry["discovery_url"], where) if entry.get("discovery_url") else "",
            collections_claim=str(entry.get("collections_claim", "collections")),
            passports=bool(entry.get("passports", True))))
    visas = []
    for i, entry in enumerate(_entries(table, "visa_issuer", "auth.visa_issuer")):
        where = f"[[auth.visa_issuer]] entry {i + 1}"
        extra = set(entry) - {"issuer", "jku", "collections", "roles"}
        if extra:
            raise ConfigError(f"{where}: unknown keys: {', '.join(sorted(extra))}")
        mapping = entry.get("collections")
        if not isinstance(entry.get("issuer"), str) or not entry.get("jku") or not isinstance(mapping, dict):
            raise ConfigError(f"{where}: needs issuer, jku (allowed JWKS URLs) and collections "
                              "(a table: visa value -> collection)")
        roles = _strings(entry, "roles", where) or ("read",)
        if set(roles) - {"read", "write", "delete"}:
            raise ConfigError(f"{where}: roles must be within read, write, delete")
        visas.append(VisaIssuer(entry["issuer"], tuple(_url(u, where) for u in _strings(entry, "jku", where)),
                                tuple((str(k), str(v)) for k, v in mapping.items()), roles))
    return AuthSettings(**values, public_collections=_strings(table, "public_collections", "auth"),
                        cors_origins=_strings(table, "cors_origins", "auth"), issuers=tuple(issuers),
                        visa_issuers=tuple(visas))
