"""Build and drive harness/clockshift.c: a process whose wall clock
(CLOCK_REALTIME only) is off by an offset that a test can step while it runs.

    so = build(folder)                   # gcc, once per folder
    env = environment(so, offset_file)   # for the daemon's environment
    step(offset_file, 60)                # its wall clock is now 60 s ahead
    measure(so, 60)                      # (wall, monotonic) offsets of a shifted process
"""
import json
import os
import shutil
import subprocess
import sys
import time

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clockshift.c")


def build(folder):
    """clockshift.so in `folder` (readable by every user: the daemons may run as postgres)."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is not installed (bin/setup installs it)")
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, "clockshift.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", target, SOURCE, "-ldl"],
                   check=True, capture_output=True)
    os.chmod(target, 0o755)
    return target


def environment(so, offset_file):
    return {"LD_PRELOAD": so, "PGHA_CLOCKSHIFT_FILE": offset_file}


def step(offset_file, seconds):
    """Set the offset (read by the shifted processes within 0.1 s)."""
    tmp = offset_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{seconds}\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, offset_file)


_PROBE = """
import ctypes, json, time
libc = ctypes.CDLL(None)
class TV(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]
tv = TV()
libc.gettimeofday(ctypes.byref(tv), None)
print(json.dumps({"time_time": time.time(), "monotonic": time.monotonic(),
                  "gettimeofday": tv.sec + tv.usec / 1e6, "time": libc.time(None)}))
"""


def measure(so, seconds):
    """How far each clock of a process run under the shim (offset `seconds`)
    is from ours: {"time_time", "gettimeofday", "time", "monotonic"} -> s."""
    env = {**os.environ, "LD_PRELOAD": so, "PGHA_CLOCKSHIFT": str(seconds)}
    env.pop("PGHA_CLOCKSHIFT_FILE", None)
    before = time.time(), time.monotonic()
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True, capture_output=True,
                         text=True).stdout
    after = time.time(), time.monotonic()
    seen = json.loads(out)
    wall, mono = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
    return {"time_time": seen["time_time"] - wall, "gettimeofday": seen["gettimeofday"] - wall,
            "time": seen["time"] - wall, "monotonic": seen["monotonic"] - mono}

