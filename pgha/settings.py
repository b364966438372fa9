"""Loading and checking settings.

Settings are plain Python files of assignments, like the original
node_settings.py. The top-level settings module holds the defaults; a file
given with --settings overrides any subset of them. Every value is checked
at start so that a typo stops the program with one line naming the setting,
never a traceback half-way through a failover.
"""
import ipaddress
import json
import os
import re
import runpy
import shlex
import stat
import traceback
from dataclasses import dataclass
from types import SimpleNamespace

from pgha import files, hba
from pgha.clusters import has_name_chars, settings_problem as clusters_problem
from pgha.tls import settings_problem as tls_settings_problem
from pgha.topology import members_problem


# The cluster's timings (seconds) unless the arbiter's settings say otherwise:
# arbiter_settings.py reads them, and a node uses them until the arbiter has
# told it the cluster's own (docs/ha-model.md: Timings).
HEARTBEAT_INTERVAL = 0.5        # between a node's reports
LEASE_TIME = 1.8                # a primary's lease; it fences itself when all its leases run out
FAILOVER_MARGIN = 0.4           # the arbiter waits lease_time + this before promoting


class SettingsError(Exception):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True)
class Spec:
    kind: type | tuple
    check: object = None        # callable(value) -> error text or None
    optional: bool = False      # None is allowed
    secret: bool = False        # never echo the value (passwords)


def positive(value):
    return None if value > 0 else "must be greater than 0"


def percent(value):
    return None if 0 < value <= 100 else "must be a percentage (1-100)"


def port(value):
    return None if 0 < value < 65536 else "must be a TCP port (1-65535)"


def non_empty(value):
    return None if value.strip() else "must not be empty"


# Characters no password can hold end to end: initdb --pwfile and the pgpass
# file end a password at a newline (and strip a carriage return), and C
# strings (libpq, the server) end at NUL.
UNUSABLE_IN_PASSWORDS = {"\0": "NUL", "\n": "newline", "\r": "carriage return"}

# The shipped node_settings.py holds this instead of real passwords; the
# programs refuse to run with it (cli.load_settings), and a file holding only
# placeholders need not be private.
PLACEHOLDER_PASSWORD = "change-me"


def password(value):
    if not value.strip():
        return "must not be empty"
    found = [name for char, name in UNUSABLE_IN_PASSWORDS.items() if char in value]
    if found:
        return f"holds a {found[0]} character, which no password can hold (PostgreSQL, pgpass and initdb)"
    return None


def identifier(value):
    ok = value and has_name_chars(value)
    return None if ok else "may hold only letters, digits, '_', '-' and '.'"


def slot_identifier(value):
    ok = value and all(c.islower() or c.isdigit() or c == "_" for c in value)
    return None if ok else "may hold only lower-case letters, digits and '_' (a replication slot name)"


def networks(value):
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except (TypeError, ValueError):
            return f"holds {item!r}, which is not a network in CIDR form (e.g. 10.0.0.0/24)"
    return None if value else "must name at least one network"


# PostgreSQL parameters the node sets itself (pgha.conf): a pg_parameters entry
# for one would be overridden or, worse, weaken a guarantee (synchronous_commit).
MANAGED_PARAMETERS = ("synchronous_standby_names", "synchronous_commit", "primary_conninfo",
                      "primary_slot_name", "port", "listen_addresses", "unix_socket_directories",
                      "recovery_target_timeline", "cluster_name", "wal_level", "hot_standby", "wal_log_hints")


def unmanaged_parameters(value):
    for key in value:
        if not isinstance(key, str):
            return f"has a key {key!r} that is not a parameter name"
        if key.lower() in MANAGED_PARAMETERS:
            return (f"sets {key!r}, which the node manages itself (synchronous replication, "
                    "roles and addresses come from the other settings)")
    return None


def permanent_slots(value):
    """Patroni's permanent slots: {name: {"type": "physical"}} or
    {name: {"type": "logical", "database": DB, "plugin": PLUGIN}}."""
    for name, spec in value.items():
        if not isinstance(name, str) or slot_identifier(name):
            return f"names a slot {str(name)[:64]!r}: {slot_identifier(name) if isinstance(name, str) else 'not a name'}"
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "physical" and set(spec) == {"type"}:
            continue
        if kind == "logical" and set(spec) == {"type", "database", "plugin"} and \
                all(isinstance(spec[k], str) and not identifier(spec[k]) for k in ("database", "plugin")):
            continue
        return (f"gives slot {name!r} {spec!r}: it must be {{\"type\": \"physical\"}} or "
                '{"type": "logical", "database": DB, "plugin": PLUGIN}')
    return None


BASEBACKUP = "basebackup"      # the built-in replica method: pg_basebackup from the primary


def replica_methods(value):
    """Patroni's replica methods: {name: {"command": "...", "no_params": bool, KEY: VALUE, ...}}."""
    for name, spec in value.items():
        if not isinstance(name, str) or identifier(name) or name == BASEBACKUP:
            return f"names a method {str(name)[:64]!r}: a method is a name (letters, digits, '_'), not {BASEBACKUP!r}"
        problem = _method_problem(f"method {name!r}", spec, ("no_params", "keep_data", "no_master", "no_leader"))
        if problem:
            return f"gives {problem}"
    return None


RECOVERY_CONF_KEYS = re.compile(r"(restore_command|recovery_end_command|recovery_target(_[a-z]+)?)$")


def bootstrap_method(value):
    """Patroni's custom bootstrap: {"command": "...", "recovery_conf": {...},
    "keep_existing_recovery_conf": bool, "no_params": bool, KEY: VALUE, ...}."""
    conf = value.get("recovery_conf", {})
    rest = {k: v for k, v in value.items() if k != "recovery_conf"}
    problem = _method_problem("the method", rest, ("no_params", "keep_existing_recovery_conf"))
    if problem:
        return f"gives {problem}"
    if not isinstance(conf, dict):
        return "gives recovery_conf that is not a dict of recovery parameters"
    for key, item in conf.items():
        if not isinstance(key, str) or not RECOVERY_CONF_KEYS.match(key):
            return (f"gives recovery_conf {str(key)[:64]!r}: only restore_command, recovery_end_command and "
                    "recovery_target* parameters")
        if not isinstance(item, (str, int, bool)) or "\n" in str(item):
            return f"gives recovery_conf {key} = {str(item)[:64]!r}: a one-line string, number or boolean"
    return None


def _method_problem(label, spec, flags):
    """What is wrong with a replica or bootstrap method's {"command", flags, KEY: VALUE}, or None."""
    if not isinstance(spec, dict) or not isinstance(spec.get("command"), str) or not spec["command"].strip():
        return f"{label} no \"command\" (a command line, as a string)"
    try:
        shlex.split(spec["command"])
    except ValueError as exc:
        return f"{label} a command that cannot be split into words: {exc}"
    for key, item in spec.items():
        if key in flags and not isinstance(item, bool):
            return f"{label} {key} = {item!r}: it must be True or False"
        if not isinstance(key, str) or identifier(key) or not isinstance(item, (str, int, float, bool)):
            return f"{label} {str(key)[:64]!r} = {str(item)[:64]!r}: a name and a plain value"
    return None


def replica_method_names(value):
    if not value:
        return "must name at least one method (\"basebackup\": pg_basebackup from the primary)"
    if len(set(value)) != len(value):
        return "names a method twice"
    return None


def api_credentials(value):
    """The REST API's HTTP Basic credentials (Patroni's restapi.authentication)."""
    if set(value) != {"username", "password"} or not all(isinstance(v, str) and v for v in value.values()):
        return 'must be {"username": "...", "password": "..."} (both non-empty strings)'
    if ":" in value["username"]:
        return "has a username with ':' in it (HTTP Basic cannot carry it)"
    return None


MAX_TAGS = 32
MAX_TAG_NAME, MAX_TAG_VALUE = 64, 256
MAX_TAGS_JSON = 2048        # bytes of JSON: every report carries them, and the status reply holds every report


def tags_problem(value):
    """What is wrong with Patroni-style tags (the node setting `tags`, a
    report's), or None: at most MAX_TAGS short names to short strings,
    64-bit integers, finite numbers or booleans."""
    if len(value) > MAX_TAGS:
        return f"has {len(value)} tags, at most {MAX_TAGS}"
    for name, item in value.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_TAG_NAME or not name.isprintable():
            return f"has a key {str(name)[:MAX_TAG_NAME]!r} that is not a tag name"
        if not isinstance(item, (str, int, float, bool)) or isinstance(item, str) and len(item) > MAX_TAG_VALUE \
                or isinstance(item, str) and not item.isprintable() \
                or isinstance(item, int) and not -2 ** 63 <= item < 2 ** 63 \
                or isinstance(item, float) and not abs(item) < float("inf"):
            return f"gives tag {name!r} a value that is not a short string, number or boolean"
    if len(json.dumps(value)) > MAX_TAGS_JSON:
        return f"has tags taking more than {MAX_TAGS_JSON} bytes as JSON"
    return None


def addresses(value):
    """A list of "host:port" strings."""
    for item in value:
        host, sep, number = item.rpartition(":")
        if not sep or not host.strip("[]") or not number.isdigit() or not 0 < int(number) < 65536:
            return f"holds {item!r}, which is not an address host:port"
    return None if value else "must name at least one address"


def log_level(value):
    ok = value.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")
    return None if ok else "must be DEBUG, INFO, WARNING or ERROR"


NUMBER = (int, float)


def load(defaults_path, specs, override_path=None, extra_checks=()):
    """Read defaults, apply an override file, check every value.

    Returns a SimpleNamespace of exactly the names in specs.
    """
    files = {defaults_path: _read(defaults_path, specs, allow_missing=False)}
    if override_path:
        files[override_path] = _read(override_path, specs, allow_missing=True)
    values = {}
    for held in files.values():
        values.update(held)
    for name, spec in specs.items():
        _check(name, values.get(name), spec)
    settings = SimpleNamespace(**values)
    for rule in extra_checks:
        problem = rule(settings)
        if problem:
            raise SettingsError(problem)
    # Last, so that a wrong value is named first; each file is judged by what it holds itself.
    for path, held in files.items():
        _check_private(path, held, specs)
    return settings


def _check_private(path, values, specs):
    """A settings file that holds a real password must be readable by its owner only."""
    held = [name for name, value in values.items()
            if specs[name].secret and isinstance(value, str) and value != PLACEHOLDER_PASSWORD]
    if not held:
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise SettingsError(f"settings file {path}: cannot check its permissions ({exc.strerror})") from None
    if mode & 0o077:
        raise SettingsError(f"settings file {path} holds a password ({held[0]}) but is readable by group or "
                            f"others (mode {mode:04o}): chmod 600 {path}")


def placeholder_passwords(settings, specs):
    """The secret settings still holding the shipped placeholder (sorted)."""
    return sorted(name for name, spec in specs.items()
                  if spec.secret and getattr(settings, name, None) == PLACEHOLDER_PASSWORD)


def _read(path, specs, allow_missing):
    try:
        # Before running it: a file others can write would run their code in the daemon.
        files.check_trusted(str(path), "settings file")
    except files.UnsafePathError as exc:
        raise SettingsError(str(exc)) from None
    if str(path).endswith(".toml"):
        return _names_checked(path, _read_toml(path), specs, allow_missing)
    try:
        namespace = runpy.run_path(str(path))
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except SyntaxError as exc:
        raise SettingsError(f"settings file {path}, line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # a settings file is user code: report, don't trace
        # Name the error and the line, not its text: that may quote a password.
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f", line {frames[-1].lineno}" if frames else ""
        raise SettingsError(f"settings file {path}{where}: {type(exc).__name__} while loading it") from None
    return _names_checked(path, {name: value for name, value in namespace.items()
                                 if not (name.startswith("_") or callable(value) or type(value).__name__ == "module")},
                          specs, allow_missing)


def _read_toml(path):
    """A settings file in TOML: data only, nothing runs (`name = value` per
    line; TOML has no None: an optional setting left out keeps its default)."""
    try:
        import tomllib
    except ImportError:     # Python 3.10
        raise SettingsError(f"settings file {path}: TOML settings need Python 3.11 or newer "
                            "(or write it as a .py file)") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"settings file {path} does not exist") from None
    except OSError as exc:
        raise SettingsError(f"settings file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:     # says the line and column, never the value
        raise SettingsError(f"settings file {path}: {exc}") from None


def _names_checked(path, held, specs, allow_missing):
    values = {}
    for name, value in held.items():
        if name not in specs:
            raise SettingsError(f"settings file {path}: unknown setting {name!r}")
        values[name] = value
    if not allow_missing:
        missing = sorted(set(specs) - set(values))
        if missing:
            raise SettingsError(f"settings file {path}: missing setting {missing[0]!r}")
    return values


def _check(name, value, spec):
    if value is None:
        if spec.optional:
            return
        raise SettingsError(f"setting {name!r} is required")
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        wanted = " or ".join(k.__name__ for k in kinds)
        shown = "a hidden value" if spec.secret else repr(value)
        raise SettingsError(f"setting {name!r} must be {wanted}, got {shown}")
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise SettingsError(f"setting {name!r} must be a list of strings")
    problem = spec.check(value) if spec.check else None
    if problem:
        shown = "" if spec.secret else f" (got {value!r})"
        raise SettingsError(f"setting {name!r} {problem}{shown}")


NODE_SPECS = {
    "name": Spec(str, identifier),
    "host": Spec(str, non_empty),
    "pg_port": Spec(int, port),
    "peer_port": Spec(int, port),
    "peer_bind": Spec(str, non_empty),
    # The lease link's port as the other node reaches it, when a proxy or a
    # port forward stands between them; None: peer_port.
    "peer_advertise_port": Spec(int, port, optional=True),
    "listen_addresses": Spec(str, non_empty),
    "slot_name": Spec(str, slot_identifier),
    "arbiter_host": Spec(str, non_empty),
    "arbiter_port": Spec(int, port),
    "pgdata": Spec(str, non_empty),
    "socket_dir": Spec(str, non_empty, optional=True),
    "state_dir": Spec(str, non_empty, optional=True),
    "pg_bindir": Spec(str, non_empty, optional=True),
    "pg_os_user": Spec(str, non_empty),
    "admin_user": Spec(str, identifier),
    "admin_password": Spec(str, password, secret=True),
    "replication_user": Spec(str, identifier),
    "replication_password": Spec(str, password, secret=True),
    "app_user": Spec(str, identifier),
    "app_password": Spec(str, password, secret=True),
    "database": Spec(str, identifier),
    "hba_networks": Spec(list, networks),
    "pg_hba": Spec(list, hba.hba_lines, optional=True),      # None: pgha's lines on top of the file as it is
    "pg_ident": Spec(list, hba.ident_lines, optional=True),  # None: pg_ident.conf left alone
    "pg_parameters": Spec(dict, unmanaged_parameters),
    "permanent_slots": Spec(dict, permanent_slots),
    "create_replica_methods": Spec(list, replica_method_names),
    "replica_methods": Spec(dict, replica_methods),
    "bootstrap_method": Spec(dict, bootstrap_method, optional=True),    # None: initdb
    "key_file": Spec(str, non_empty),
    "log_level": Spec(str, log_level),
    "log_file": Spec(str, non_empty, optional=True),
    "api_bind": Spec(str, optional=True),       # None or "": no REST API
    "api_port": Spec(int, port),
    "tags": Spec(dict, tags_problem),                   # Patroni's tags, in the REST API
    "disk_warning_percent": Spec(int, percent),  # a disk this full is logged and flagged (pgha/disk.py)
    # Patroni-style writes (POST /switchover with Patroni's body, ...): HTTP Basic credentials, and
    # the operator key the node signs them with. Both or neither.
    "api_authentication": Spec(dict, api_credentials, optional=True, secret=True),
    "api_operator_key_file": Spec(str, non_empty, optional=True),
    "api_cluster_key_file": Spec(str, non_empty, optional=True),    # set: /cluster only for reader-signed requests
    "on_role_change": Spec(str, non_empty, optional=True),   # callbacks (pgha.callbacks): executables
    "on_start": Spec(str, non_empty, optional=True),
    "on_stop": Spec(str, non_empty, optional=True),
    "on_reload": Spec(str, non_empty, optional=True),
    "on_restart": Spec(str, non_empty, optional=True),
    "pre_promote": Spec(str, non_empty, optional=True),     # run before a promotion; its failure blocks it
    "callback_timeout": Spec(NUMBER, positive),
    # Outside pause, stopping the daemon also stops PostgreSQL (the old way; False: left running for a restart).
    "stop_postgres_on_exit": Spec(bool),
    # Several arbiter processes (state on etcd): every one's "host:port"; None: arbiter_host:arbiter_port.
    "arbiter_hosts": Spec(list, addresses, optional=True),
    # The cluster this node belongs to on the arbiter (its clusters setting; "main" for a one-cluster arbiter).
    "cluster_name": Spec(str, identifier),
    # TLS on the control ports (pgha.tls; made by `pgha-keys tls`): all three or none.
    "tls_cert_file": Spec(str, non_empty, optional=True),
    "tls_key_file": Spec(str, non_empty, optional=True),
    "tls_ca_file": Spec(str, non_empty, optional=True),
    # Map the system's OpenSSL even without TLS (cli.without_system_openssl): ~3.5 MB resident.
    "system_openssl": Spec(bool),
}

ARBITER_SPECS = {
    "listen_host": Spec(str, non_empty),
    "listen_port": Spec(int, port),
    "nodes": Spec(list),
    "initial_primary": Spec(str, identifier),
    "state_file": Spec(str, non_empty),
    "heartbeat_interval": Spec(NUMBER, positive),
    "lease_time": Spec(NUMBER, positive),
    "failover_margin": Spec(NUMBER, positive),
    "strict_sync": Spec(bool),
    "sync_stall_timeout": Spec(NUMBER, positive),
    "standby_reply_timeout": Spec(NUMBER, positive),
    "key_file": Spec(str, non_empty),
    "log_level": Spec(str, log_level),
    "log_file": Spec(str, non_empty, optional=True),
    # Where the decision is kept: "file" (state_file) or "etcd" (several arbiters, one leads).
    "state_backend": Spec(str, lambda v: None if v in ("file", "etcd") else 'must be "file" or "etcd"'),
    "cluster_name": Spec(str, identifier),
    # Many clusters served by this one arbiter: name -> {"nodes": [a, b], "initial_primary": a} (pgha.clusters).
    "clusters": Spec(dict, optional=True),
    "etcd_endpoints": Spec(list),
    "etcd_prefix": Spec(str, lambda v: None if v.startswith("/") and v.strip("/") else
                        'must be a key prefix such as "/pgha"'),
    "etcd_lease_ttl": Spec(int, lambda v: None if v >= 2 else "must be at least 2 (seconds; etcd's minimum)"),
    "etcd_timeout": Spec(NUMBER, positive),
    "etcd_ca_file": Spec(str, non_empty, optional=True),
    "etcd_cert_file": Spec(str, non_empty, optional=True),
    "etcd_key_file": Spec(str, non_empty, optional=True),
    "etcd_user": Spec(str, non_empty, optional=True),
    "etcd_password": Spec(str, password, optional=True, secret=True),
    "advertise_address": Spec(str, lambda v: addresses([v]), optional=True),
    "acting_record_file": Spec(str, non_empty, optional=True),
    # TLS on the control ports (pgha.tls; made by `pgha-keys tls`): all three or none.
    "tls_cert_file": Spec(str, non_empty, optional=True),
    "tls_key_file": Spec(str, non_empty, optional=True),
    "tls_ca_file": Spec(str, non_empty, optional=True),
}


def _etcd_settings(settings):
    if settings.state_backend != "etcd":
        return None
    if not settings.etcd_endpoints:
        return "setting 'etcd_endpoints' must list at least one URL when state_backend is \"etcd\""
    for url in settings.etcd_endpoints:
        if not (url.startswith("http://") or url.startswith("https://")):
            return f"setting 'etcd_endpoints' holds {url!r}, which is not an http:// or https:// URL"
    if settings.etcd_lease_ttl > settings.lease_time + settings.failover_margin:
        return ("setting 'etcd_lease_ttl' must be at most lease_time + failover_margin: a dead arbiter's "
                "lease must not delay a failover longer than a failover takes anyway")
    if bool(settings.etcd_user) != bool(settings.etcd_password):
        return "settings 'etcd_user' and 'etcd_password' go together"
    if bool(settings.etcd_cert_file) != bool(settings.etcd_key_file):
        return "settings 'etcd_cert_file' and 'etcd_key_file' go together"
    return None


def _tls_settings(settings):
    return tls_settings_problem(settings)


def _members(settings):
    nodes = settings.nodes
    problem = members_problem(nodes)
    if problem:
        return f"setting 'nodes' {problem}"
    bad = next((n for n in nodes if identifier(n)), None)
    if bad is not None:
        return f"setting 'nodes': node name {bad!r} {identifier(bad)}"
    if settings.initial_primary not in nodes:
        return f"setting 'initial_primary' ({settings.initial_primary!r}) must be one of 'nodes' {nodes!r}"
    if settings.heartbeat_interval * 2 > settings.lease_time:
        return "setting 'lease_time' must be at least two heartbeat intervals"
    return None


def _clusters(settings):
    return clusters_problem(settings)


ARBITER_CHECKS = (_members, _etcd_settings, _tls_settings, _clusters)


def _distinct_roles(settings):
    roles = (settings.admin_user, settings.replication_user, settings.app_user)
    if len(set(roles)) != 3:
        return ("settings 'admin_user', 'replication_user' and 'app_user' must name three different roles "
                f"(got {roles[0]!r}, {roles[1]!r}, {roles[2]!r})")
    return None


def _own_slot_not_permanent(settings):
    if settings.slot_name in settings.permanent_slots:
        return (f"setting 'permanent_slots' names {settings.slot_name!r}, this node's own replication slot "
                "('slot_name'): pick another name")
    return None


def _replica_methods_defined(settings):
    missing = [m for m in settings.create_replica_methods if m != BASEBACKUP and m not in settings.replica_methods]
    if missing:
        return (f"setting 'create_replica_methods' names {missing[0]!r}, which 'replica_methods' does not define "
                f"(defined: {', '.join(sorted(settings.replica_methods)) or 'none'}; built in: {BASEBACKUP!r})")
    return None


def _api_writes(settings):
    if bool(settings.api_authentication) != bool(settings.api_operator_key_file):
        return ("settings 'api_authentication' and 'api_operator_key_file' go together (Patroni-style writes "
                "need both the REST credentials and the key they are signed with)")
    return None


NODE_CHECKS = (_distinct_roles, _tls_settings, _own_slot_not_permanent, _replica_methods_defined, _api_writes)
