"""What node.py and arbiter.py share at start: arguments and settings."""
import argparse
import sys

# pgha.keys is imported by load_keys only: it imports hashlib, which the node
# daemon must be able to steer first (without_system_openssl).
from pgha import settings as settings_mod
from pgha import tls as tls_mod


def load_settings(program, description, defaults, specs, checks=(), argv=None):
    """Parse --settings and load it over the defaults; exit 2 with one line on a bad value."""
    return load_settings_and_flags(program, description, defaults, specs, checks, argv)[0]


def load_settings_and_flags(program, description, defaults, specs, checks=(), argv=None, flags=()):
    """load_settings, plus command-line flags: flags is a sequence of
    (option, help) for a switch or (option, help, METAVAR) for a value;
    returns (settings, argparse namespace)."""
    parser = argparse.ArgumentParser(prog=f"{program}.py", description=description)
    parser.add_argument("--settings", metavar="FILE", help=f"settings overriding {program}_settings.py")
    for option, text, *metavar in flags:     # (option, help[, METAVAR]): a value, else a switch
        if metavar:
            parser.add_argument(option, metavar=metavar[0], help=text)
        else:
            parser.add_argument(option, action="store_true", help=text)
    args = parser.parse_args(argv)
    try:
        settings = settings_mod.load(defaults, specs, args.settings, checks)
    except settings_mod.SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)
    placeholders = settings_mod.placeholder_passwords(settings, specs)
    if placeholders:
        print(f"{program}: setting {placeholders[0]!r} is still the shipped placeholder "
              f"{settings_mod.PLACEHOLDER_PASSWORD!r}: set real passwords in a --settings file (chmod 600)",
              file=sys.stderr)
        sys.exit(2)
    return settings, args


VALIDATE = ("--validate", "check the settings (and what they name on this host), print what is wrong, and exit")


def validated(program, settings, args, problems):
    """--validate: print each problem (exit status 2) or that the settings are OK (0)."""
    found = problems(settings)
    for line in found:
        print(f"{program}: {line}", file=sys.stderr)
    if not found:
        print(f"{program}: settings OK ({args.settings or 'the defaults'})")
    return 2 if found else 0


def settings_loader(defaults, specs, checks, path):
    """A function that loads the settings again (for a reload), raising
    SettingsError with one line, placeholders included."""
    def load():
        settings = settings_mod.load(defaults, specs, path, checks)
        placeholders = settings_mod.placeholder_passwords(settings, specs)
        if placeholders:
            raise settings_mod.SettingsError(f"setting {placeholders[0]!r} is the shipped placeholder "
                                             f"{settings_mod.PLACEHOLDER_PASSWORD!r}")
        return settings
    return load


def load_tls(program, settings):
    """pgha.tls.contexts(settings); exit 2 with one line when a TLS file is missing or unsafe."""
    try:
        return tls_mod.contexts(settings)
    except tls_mod.TLSError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)


def load_keys(program, loader, path, *args):
    """loader(path, *args) from pgha.keys; exit 2 with one line when the key
    file is missing or unsafe (a daemon trusts only a key file that root or
    its own user owns and only they can write)."""
    from pgha import files
    from pgha import keys as keys_mod
    try:
        files.check_trusted(path, "key file")
        return loader(path, *args)
    except (keys_mod.KeyFileError, files.UnsafePathError) as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)


def without_system_openssl(settings):
    """The node daemon without TLS, unless its setting system_openssl says
    otherwise: keep the system's OpenSSL out of the process.

    A daemon that never speaks TLS would still map the system's libcrypto and
    libssl (~3.5 MB resident): hashlib/hmac (pgha.auth) use OpenSSL's SHA-256,
    and `ssl` is imported by psycopg2 (to set up thread callbacks on that
    library) and by http.client (the REST API). psycopg2-binary bundles and
    uses its own libcrypto, which stays either way. Call this before anything
    imports hashlib (pgha.keys, pgha.auth, secrets, hmac), psycopg2 or
    pgha.api. With TLS on, ssl loads the library anyway: nothing is changed.
    TLS contexts are made once at start (Node), never on a reload.
    """
    if tls_mod.enabled(settings) or settings.system_openssl:
        return
    # hashlib and hmac fall back to Python's built-in SHA-256 (same bytes;
    # a heartbeat signs a few short messages, so speed does not matter), and
    # hmac.compare_digest to _operator's, the same constant-time comparison.
    sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]  # None: "import fails", by design
    # `import ssl` now raises ImportError: psycopg2 then leaves thread safety
    # to libpq and its bundled libcrypto (OpenSSL >= 1.1 needs no callbacks),
    # http.client goes without HTTPS, which the node never uses.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
