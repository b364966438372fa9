"""Files a daemon writes and the files it trusts, safe when it runs as root.

write_durably: replace a file by new content so that a reader sees either
the old content or the new, never a torn write, and once it returns the new
content survives a crash. A daemon run as root writes into folders its
unprivileged user (and so a PostgreSQL superuser, via COPY ... TO PROGRAM)
can write to, so nothing on the way may be a link planted there:

- the folder is reached from "/" one name at a time, each opened with
  O_NOFOLLOW; a symbolic link on the way is followed only when root or this
  process's user owns it (one an administrator made, such as /var/run), and
  refused (UnsafePathError, one line) when anyone else does;
- the temporary file has a unique name in that folder, created with
  O_CREAT|O_EXCL|O_NOFOLLOW and its final mode, relative to the folder's
  descriptor: a link planted at any name is never opened, only the file this
  call made is written, fsynced and renamed over the target (a link planted
  at the target itself is replaced, not followed);
- the folder is fsynced through the same descriptor.

check_trusted: a file whose content the daemon runs or trusts (settings,
key files) must be owned by root or this process's user and not writable by
group or others; otherwise one line says so (a 0666 settings file would
let anyone run code in the daemon).
"""
from __future__ import annotations

import errno
import os
import stat

MAX_LINKS = 40      # as the kernel's own limit on links followed in one lookup


class UnsafePathError(OSError):
    """A path a daemon writes or trusts goes through a link or file it must not trust."""

    def __str__(self) -> str:
        return str(self.strerror)       # one line, without "[Errno 1]"


def trusted_owner(uid: int) -> bool:
    """Root, or the user this process runs as."""
    return uid in (0, os.geteuid())


def open_folder(path: str) -> int:
    """A descriptor of the folder `path` (O_DIRECTORY), reached without
    following a symbolic link that root or this user did not make."""
    names = [n for n in os.path.abspath(path).split("/") if n]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    links = 0
    try:
        while names:
            name = names.pop(0)
            if name == ".":
                continue
            try:
                next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(info.st_mode):
                    raise
                if not trusted_owner(info.st_uid):
                    raise UnsafePathError(errno.EPERM, f"{path}: {name} is a symbolic link owned by uid "
                                          f"{info.st_uid}, not by root or this user; not followed") from None
                links += 1
                if links > MAX_LINKS:
                    raise UnsafePathError(errno.ELOOP, f"{path}: too many symbolic links") from None
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
                names = [n for n in target.split("/") if n] + names
                continue
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_durably(path: str, data: str | bytes, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Replace path by data; owner is (uid, gid) when the file must belong to another user."""
    body = data.encode("utf-8") if isinstance(data, str) else data
    name = os.path.basename(path)
    folder = open_folder(os.path.dirname(os.path.abspath(path)))
    try:
        # os.urandom, not secrets: that imports hashlib, which the node daemon
        # loads only after choosing its SHA-256 (cli.without_system_openssl).
        tmp = f".{name}.{os.urandom(8).hex()}.tmp"
        # Created with its final mode, so a secret is never readable by others, even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=folder)
        try:
            try:
                os.fchmod(fd, mode)     # the umask may have narrowed it
                if owner is not None:
                    os.fchown(fd, *owner)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            # The old file is untouched; leave no half-written temporary behind.
            try:
                os.unlink(tmp, dir_fd=folder)
            except OSError:
                pass
            raise
        os.fsync(folder)
    finally:
        os.close(folder)


def read_no_follow(path: str) -> bytes | None:
    """A regular file's bytes, or None when it is missing, a link or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read()


def untrusted_reason(info: os.stat_result) -> str | None:
    """Why a settings or key file with this status must not be trusted, or None."""
    if not trusted_owner(info.st_uid):
        return f"is owned by uid {info.st_uid}, not by root or this user (uid {os.geteuid()})"
    if info.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def check_trusted(path: str, what: str) -> None:
    """Refuse (UnsafePathError, one line) a file whose content the daemon runs
    or trusts unless root or this user owns it and only they can write it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return      # the caller reports a missing file in its own words
    reason = untrusted_reason(info)
    if reason:
        raise UnsafePathError(errno.EPERM, f"{what} {path} {reason}: chown it to root or this user "
                              f"and chmod go-w {path}")
