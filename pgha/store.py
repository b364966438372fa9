"""Durable files: write to a temporary file, fsync, rename, fsync the folder.

A reader sees either the old content or the new, never a torn write, and
once save() returns the new content survives a crash or power loss.
"""
import json
import os


def save_json(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_json(path):
    """The saved object, or None when there is no file yet."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
