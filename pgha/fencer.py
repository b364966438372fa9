"""The fencer: stops this host's PostgreSQL when the primary's lease runs out,
even when the node daemon is dead, OOM-killed or frozen (ha-model.md,
invariant 2). It does nothing else.

    python3 -I -S fencer.py --pgdata DIR --fifo PATH [--pidfile PATH]

It holds one deadline and reads commands, one line each, from a FIFO it
opens read-write (so writers may come and go and it never sees end of file):

    arm T     fence when the monotonic clock passes T
    cap T     the same, but never later than a deadline already armed
    disarm    forget the deadline
    exit      end (disarmed)

T is an absolute CLOCK_MONOTONIC time (Python's time.monotonic(), shared by
every process on the host), so a command read late still means exactly the
lease end the daemon computed: a relative "seconds left" would grow by
however long the command sat in the pipe.

Fencing: if PGDATA/postmaster.pid names a live postgres process serving this
PGDATA, SIGQUIT it (what pg_ctl -m immediate sends) and SIGKILL its process
group if it is still there after a few seconds. Then disarm and go on: the
daemon may arm it again. Standard library only, few imports, so it starts
in milliseconds and stays a few MB.
"""
import errno
import os
import select
import signal
import sys
import time

KILL_AFTER = 3.0    # seconds from SIGQUIT to SIGKILL


def log(level, text):
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    line = "%s.%03d %-8s fencer[%d]: %s\n" % (stamp, int(now * 1000) % 1000, level, os.getpid(), text)
    try:
        os.write(2, line.encode("utf-8", "replace"))
    except OSError:
        pass


def parse_args(argv):
    """--pgdata DIR --fifo PATH [--pidfile PATH]; exit 2 with one line otherwise."""
    wanted = {"--pgdata": None, "--fifo": None, "--pidfile": None}
    args = list(argv)
    while args:
        key = args.pop(0)
        if key not in wanted or not args:
            sys.stderr.write("fencer: usage: fencer.py --pgdata DIR --fifo PATH [--pidfile PATH]\n")
            sys.exit(2)
        wanted[key] = args.pop(0)
    if not wanted["--pgdata"] or not wanted["--fifo"]:
        sys.stderr.write("fencer: --pgdata and --fifo are required\n")
        sys.exit(2)
    return os.path.realpath(wanted["--pgdata"]), wanted["--fifo"], wanted["--pidfile"]


# -- which process to fence ------------------------------------------------------

def postmaster_of(pgdata):
    """The pid of the live postmaster serving pgdata, or None.

    The pid file must name pgdata on its second line and the process must be
    postgres started with -D pgdata: a stale pid file whose pid now belongs
    to something else is never signalled."""
    try:
        with open(os.path.join(pgdata, "postmaster.pid")) as f:
            lines = f.read().split("\n")
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1 or len(lines) < 2 or os.path.realpath(lines[1]) != pgdata:
        return None
    return pid if is_postmaster(pid, pgdata) else None


def is_postmaster(pid, pgdata):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return False    # gone (a zombie's cmdline is empty, see below)
    if not argv or os.path.basename(argv[0]) not in ("postgres", "postmaster"):
        return False
    for flag, value in zip(argv, argv[1:]):
        if flag == "-D" and os.path.realpath(value) == pgdata:
            return True
    return False


def fence(pgdata):
    pid = postmaster_of(pgdata)
    if pid is None:
        log("INFO", "lease ran out; no PostgreSQL running in %s, nothing to fence" % pgdata)
        return
    try:
        os.kill(pid, signal.SIGQUIT)
    except OSError as exc:
        log("ERROR", "lease ran out; could not signal postmaster %d: %s" % (pid, exc))
        return
    log("FAILOVER", "lease ran out: immediate shutdown of PostgreSQL (postmaster %d, %s)" % (pid, pgdata))
    give_up = time.monotonic() + KILL_AFTER
    while time.monotonic() < give_up:
        if not is_postmaster(pid, pgdata):
            return
        time.sleep(0.02)
    try:   # pg_ctl makes the postmaster a process group leader: take its children too
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
        log("FAILOVER", "postmaster %d still there after %.0fs: killed" % (pid, KILL_AFTER))
    except OSError:
        pass


# -- the loop ---------------------------------------------------------------------

def apply(command, deadline):
    """The new deadline after one command line; "exit" returns False."""
    words = command.split()
    if not words:
        return deadline
    if words[0] == "disarm" and len(words) == 1:
        return None
    if words[0] == "exit" and len(words) == 1:
        return False
    if words[0] in ("arm", "cap") and len(words) == 2:
        try:
            until = float(words[1])
        except ValueError:
            until = None
        if until is not None and until == until:    # not NaN
            if words[0] == "cap" and deadline is not None:
                return min(deadline, until)
            return until
    log("WARNING", "ignoring unknown command %r" % command[:80])
    return deadline


def open_fifo(path):
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    st = os.fstat(fd)
    if (st.st_mode & 0o170000) != 0o010000 or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise OSError(errno.EPERM, "%s is not a FIFO of ours with mode 0600" % path)
    return fd


def write_pidfile(path):
    # Standard library only (this script runs alone), so not pgha.files: a
    # unique temporary name created O_EXCL|O_NOFOLLOW, so a link planted at
    # any name is never opened; the rename replaces a link at the target.
    tmp = "%s.%d.%s.tmp" % (path, os.getpid(), os.urandom(6).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, b"%d\n" % os.getpid())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_pidfile(path):
    try:
        with open(path) as f:
            if int(f.read().strip() or 0) != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass


def run(pgdata, fifo_path, pidfile):
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)
    fd = open_fifo(fifo_path)
    if pidfile:
        write_pidfile(pidfile)     # after the FIFO is open: the pid file means "ready"
    log("INFO", "started for %s (disarmed)" % pgdata)
    deadline = None
    pending = b""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            readable = []
        if readable:
            try:
                pending += os.read(fd, 4096)
            except BlockingIOError:
                pass
            *lines, pending = pending.split(b"\n")
            pending = pending[-256:]
            for line in lines:     # all queued commands first: each carries a real lease end
                deadline = apply(line.decode("ascii", "replace"), deadline)
                if deadline is False:
                    log("INFO", "exiting on request")
                    if pidfile:
                        remove_pidfile(pidfile)
                    return 0
        if deadline is not None and time.monotonic() >= deadline:
            fence(pgdata)
            deadline = None


def main(argv=None):
    pgdata, fifo_path, pidfile = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(pgdata, fifo_path, pidfile)
    except OSError as exc:
        log("ERROR", "cannot run: %s" % exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
