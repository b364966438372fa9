"""What node.py and arbiter.py share at start: arguments and settings."""
import argparse
import sys

from pgha import keys as keys_mod
from pgha import settings as settings_mod


def load_settings(program, description, defaults, specs, checks=(), argv=None):
    """Parse --settings and load it over the defaults; exit 2 with one line on a bad value."""
    parser = argparse.ArgumentParser(prog=f"{program}.py", description=description)
    parser.add_argument("--settings", metavar="FILE", help=f"settings overriding {program}_settings.py")
    args = parser.parse_args(argv)
    try:
        return settings_mod.load(defaults, specs, args.settings, checks)
    except settings_mod.SettingsError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)


def load_keys(program, loader, *args):
    """loader(*args) from pgha.keys; exit 2 with one line when the key file is missing or unsafe."""
    try:
        return loader(*args)
    except keys_mod.KeyFileError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)
