"""Durable files: write to a temporary file, fsync, rename, fsync the folder.

A reader sees either the old content or the new, never a torn write, and
once a write returns the new content survives a crash or power loss.
"""
from __future__ import annotations

import json
import os
from typing import Any


def write_durably(path: str, text: str, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Replace path by text; owner is (uid, gid) when the file must belong to another user."""
    tmp = f"{path}.tmp"
    # Created with its final mode, so a secret is never readable by others, even briefly.
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        os.fchmod(f.fileno(), mode)     # a leftover tmp file keeps its old mode otherwise
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_json(path: str, data: Any) -> None:
    write_durably(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def load_json(path: str) -> Any:
    """The saved object, or None when there is no file yet."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
