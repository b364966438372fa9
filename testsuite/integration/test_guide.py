"""The real-hosts guide (README, "Setting up three real hosts"), run as a DBA
follows it (issue 20): three clean Debian containers of the fault suite's
base image (harness/docker.py) named arbiter, pgsql-1 and pgsql-2, on a
network of their own, with nothing in them but the .deb this checkout builds
(the session fixture `built`) and the guide's commands, taken from README.md
in the guide's order: each fenced block after a `<!-- guide: ... -->`
comment, run as root in /root on the hosts it names (`operator`: the
operator's machine, here the arbiter container in /root/operator; one block
runs on its hosts at once). PostgreSQL comes from Debian's packages, which
the guide's apt-get installs (the package recommends it), from the mirror the
base image names.

What the test does differently from a DBA, and nothing else:
- addresses: the guide's 10.0.0.10, .11, .12 and 10.0.0.0/24 are the
  network's arbiter, pgsql-1, pgsql-2 addresses and its subnet;
- the passwords the guide writes as "..." are random ones made by the test
  (written through stdin, never in a command line);
- apt-get runs without questions (APT::Get::Assume-Yes in the containers'
  apt configuration, DEBIAN_FRONTEND=noninteractive), where a DBA answers Y;
- `scp`: before a block that installs `NAME.keys`, the file is copied from
  the operator's `keys` folder into the host's /root with `docker cp`;
- a block marked `until "TEXT"` (the arbiter's first start, stopped with
  Ctrl-C) runs in its own process group, which gets SIGINT once its output
  shows TEXT;
- `systemctl enable --now UNIT`: no systemd in a container, so the installed
  unit file's ExecStart runs in the background as its User, in its
  WorkingDirectory with its UMask, once its StateDirectory and LogsDirectory
  are made as systemd makes them (its output, the journal's, to /tmp/UNIT.out);
- the check block (`operator check`) is run until its output (one snapshot
  each time) shows what the guide says it shows, and the clients' DSN
  (`client dsn`) is used from the test's own process with the app password.

Then the failover: pgsql-1's container is killed (the host lost); the
guide's check shows pgsql-2 the Leader, and through the guide's DSN the row
written before is there and a new write commits.
"""
import concurrent.futures
import ipaddress
import re
import secrets
import shlex
import time
from dataclasses import dataclass

import psycopg2
import pytest

from harness import docker as de
from testsuite import packaging

README = packaging.ROOT / "README.md"
SECTION = "## Setting up three real hosts"
HOSTS = ("arbiter", "pgsql-1", "pgsql-2")
OPERATOR_HOST, OPERATOR_DIR = "arbiter", "/root/operator"
GUIDE_ADDRESSES = {"arbiter": "10.0.0.10", "pgsql-1": "10.0.0.11", "pgsql-2": "10.0.0.12"}
GUIDE_SUBNET = "10.0.0.0/24"
PASSWORD_KEYS = ("admin_password", "replication_password", "app_password")
SYSTEMCTL = re.compile(r"systemctl enable --now (\S+)")
MARKER = re.compile(r"<!-- guide: (.+?) -->")
FENCE = re.compile(r"(\s*)```(\w*)\s*")


# -- the guide, read from README.md ----------------------------------------------------------

@dataclass
class Block:
    line: int                   # README line of the marker
    hosts: tuple                # where it runs ("operator", a host, or "client")
    kind: str                   # "commands", "file", "until", "check", "dsn"
    text: str
    path: str | None = None     # kind "file": where it is written
    base: str | None = None     # kind "file": the host whose file it changes ("from pgsql-1")
    until: str | None = None    # kind "until": the text after which it gets Ctrl-C

    def where(self):
        return f"README.md line {self.line} ({' '.join(self.hosts)})"


def parse_marker(body, line):
    words = body.split()
    if words == ["client", "dsn"]:
        return Block(line, ("client",), "dsn", "")
    hosts = []
    while words and words[0] in HOSTS + ("operator",):
        hosts.append(words.pop(0))
    assert hosts, f"README.md line {line}: a guide marker names no host: {body!r}"
    if not words:
        return Block(line, tuple(hosts), "commands", "")
    if words == ["check"]:
        return Block(line, tuple(hosts), "check", "")
    until = re.fullmatch(r'until "([^"]+)"', " ".join(words))
    if until:
        return Block(line, tuple(hosts), "until", "", until=until.group(1))
    if len(hosts) == 1 and words[0] == "file" and len(words) in (2, 4) and \
            (len(words) == 2 or words[2] == "from" and words[3] in HOSTS):
        return Block(line, tuple(hosts), "file", "", path=words[1], base=words[3] if len(words) == 4 else None)
    raise AssertionError(f"README.md line {line}: a guide marker this test does not know: {body!r}")


def guide_blocks(readme):
    """The guide's marked blocks, in order. Every fenced block of the section
    must be marked: a command added without a marker fails here."""
    lines = readme.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(SECTION))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "### ")))
    blocks, pending, i = [], None, start
    while i < end:
        marker, fence = MARKER.fullmatch(lines[i].strip()), FENCE.fullmatch(lines[i])
        if marker:
            pending = parse_marker(marker.group(1), i + 1)
        elif fence:
            indent, body = fence.group(1), []
            i += 1
            while lines[i].strip() != "```":
                assert lines[i].startswith(indent) or not lines[i].strip(), f"README.md line {i + 1}: indentation"
                body.append(lines[i][len(indent):])
                i += 1
            assert pending, f"README.md line {i + 1 - len(body)}: a block of the guide without a guide marker"
            pending.text = "\n".join(body) + "\n"
            blocks.append(pending)
            pending = None
        elif lines[i].strip():
            assert pending is None, f"README.md line {pending.line}: the guide marker is not right before a block"
        i += 1
    return blocks


def test_every_block_of_the_guide_is_marked_and_known():
    """The parse alone (no docker): the guide has the steps the container test
    relies on, in an order that can work."""
    blocks = guide_blocks(README.read_text())
    kinds = [b.kind for b in blocks]
    assert kinds.count("check") == 1 and kinds.count("dsn") == 1, kinds
    starts = [(b.hosts, SYSTEMCTL.fullmatch(b.text.strip()).group(1)) for b in blocks
              if SYSTEMCTL.fullmatch(b.text.strip())]
    assert starts == [(("arbiter",), "pgha-arbiter"), (("pgsql-1",), "pgha-node"), (("pgsql-2",), "pgha-node")]
    files = {(b.hosts[0], b.path) for b in blocks if b.kind == "file"}
    assert files == {("arbiter", "/etc/pgha/arbiter.py"), ("pgsql-1", "/etc/pgha/node.py"),
                     ("pgsql-2", "/etc/pgha/node.py")}
    text = "".join(b.text for b in blocks)
    for address in list(GUIDE_ADDRESSES.values()) + [GUIDE_SUBNET]:
        assert address in text, f"the guide no longer uses {address}: update the test's substitutions"
    assert text.count('"..."') == len(PASSWORD_KEYS), "the guide's passwords are no longer the three \"...\""


# -- the containers --------------------------------------------------------------------------

def unused_subnet():
    """A /24 no docker network overlaps (and not the compose suite's)."""
    used = [ipaddress.ip_network(de.SUBNET)] + [ipaddress.ip_network(subnet) for info in de.networks()
                                                for subnet in de.subnets(info) if subnet and ":" not in subnet]
    for third in range(200, 250):
        candidate = ipaddress.ip_network(f"172.30.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise AssertionError(f"no free /24 in 172.30.200-249 (docker networks: {used})")


class Cluster:
    """The three containers as the guide's hosts."""

    def __init__(self, tag, subnet, deb, tmp):
        self.network = f"pgha-guide-{tag}"
        self.subnet = subnet
        hosts = list(subnet.hosts())
        self.addresses = {h: str(hosts[9 + i]) for i, h in enumerate(HOSTS)}   # .10 .11 .12 as in the guide
        self.names = {h: f"pgha-guide-{h}-{tag}" for h in HOSTS}
        self.deb = deb
        self.tmp = tmp              # the test's machine's side of `docker cp`
        self.passwords = {key: secrets.token_hex(16) for key in PASSWORD_KEYS}
        self.files = {}             # (host, path) -> the text written

    def start(self):
        """The containers, on the network the fixture made."""
        with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as pool:
            list(pool.map(self._start_one, HOSTS))

    def _start_one(self, host):
        c = packaging.start_container(self.names[host], host, self.deb,
                                      ["--network", self.network, "--ip", self.addresses[host]])
        c.sh("echo 'APT::Get::Assume-Yes \"true\";' > /etc/apt/apt.conf.d/90-test-assume-yes && "
             f"mkdir -p {OPERATOR_DIR}")

    def remove(self):
        for name in self.names.values():
            packaging.remove_container(name)
        de.run(["docker", "network", "rm", self.network], check=False, timeout=60)

    def substitute(self, text):
        for host, address in GUIDE_ADDRESSES.items():
            text = text.replace(address, self.addresses[host])
        return text.replace(GUIDE_SUBNET, str(self.subnet))

    def exec(self, host, script, cwd="/root", timeout=600, check=True, what=None, trace=False):
        """`script` run by sh -e as root in `host`, fed on stdin (nothing of it
        shows in a process list)."""
        name = self.names[host]
        proc = de.run(["docker", "exec", "-i", "-w", cwd, "-e", "DEBIAN_FRONTEND=noninteractive", name,
                       "sh", "-e"] + (["-x"] if trace else []) + ["-s"],
                      check=False, timeout=timeout, input=script, shown=f"docker exec {name} sh (a script on stdin)")
        if check:
            assert proc.returncode == 0, f"{what or script!r} on {host} exited {proc.returncode}:\n" \
                                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{self.logs(host)}"
        return proc

    def write(self, host, path, text):
        de.run(["docker", "exec", "-i", self.names[host], "sh", "-c", f"cat > {shlex.quote(path)}"],
               input=text, timeout=30, shown=f"writing {path} on {host}")
        self.files[(host, path)] = text

    def logs(self, host):
        """The tail of each log the guide's daemons write on `host` (and of the
        output of its commands run in the background)."""
        files = {"/var/log/pgha/arbiter/arbiter.log": 80, "/var/log/pgha/node/node.log": 80,
                 "/var/lib/pgha/postgresql.log": 20, "/root/until.out": 10, "/tmp/*.out": 10}
        script = "".join(f"for f in {path}; do [ -f $f ] && echo \"== {host}:$f\" && tail -n {lines} $f; done\n"
                         for path, lines in files.items())
        proc = de.run(["docker", "exec", self.names[host], "sh", "-c", script + "true"], check=False, timeout=30)
        return proc.stdout + proc.stderr

    def all_logs(self, hosts=HOSTS):
        return "\n".join(self.logs(h) for h in hosts)


@pytest.fixture
def cluster(built, tmp_path):
    packaging.docker_ready("guide")
    for attempt in range(5):    # another run may take the same subnet between the look and the create
        cluster = Cluster(packaging.unique("t"), unused_subnet(), built[1], tmp_path)
        made = de.run(["docker", "network", "create", "--subnet", str(cluster.subnet), cluster.network],
                      check=False, timeout=60)
        if made.returncode == 0:
            break
        assert attempt < 4 and "overlap" in made.stderr, f"docker network create: {made.stderr}"
        time.sleep(1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


# -- running the guide -----------------------------------------------------------------------

def run_block(cluster, block):
    if block.kind == "file":
        text = block.text
        if block.base:
            text = replace_lines(cluster.files[(block.base, block.path)], block.text, block.where())
        for key, password in cluster.passwords.items():
            text = text.replace(f'{key} = "..."', f'{key} = "{password}"')
        cluster.write(block.hosts[0], block.path, cluster.substitute(text))
        return
    if block.kind == "until":
        run_until(cluster, block)
        return
    with concurrent.futures.ThreadPoolExecutor(len(block.hosts)) as pool:
        list(pool.map(lambda host: run_commands(cluster, host, block), block.hosts))


def replace_lines(base, changes, where):
    """`base` (a settings file) with each `name = ...` line of `changes` in
    place of the line that sets the same name."""
    out = base.splitlines()
    for line in changes.splitlines():
        key = line.split("=")[0].strip()
        found = [i for i, old in enumerate(out) if old.split("=")[0].strip() == key]
        assert len(found) == 1, f"{where}: {key} is set {len(found)} times in the file it changes"
        out[found[0]] = line
    return "\n".join(out) + "\n"


def run_commands(cluster, host, block):
    on_operator = host == "operator"
    target, cwd = (OPERATOR_HOST, OPERATOR_DIR) if on_operator else (host, "/root")
    script = []
    for line in cluster.substitute(block.text).splitlines():
        started = SYSTEMCTL.fullmatch(line.strip())
        for key_file in re.findall(r"^install .*?(\S+\.keys) ", line):
            copy_key(cluster, key_file, target, cwd)
        if started:
            flush(cluster, target, cwd, script, block)
            start_unit(cluster, target, started.group(1))
        else:
            script.append(line)
    flush(cluster, target, cwd, script, block)


def flush(cluster, host, cwd, script, block):
    if script:
        cluster.exec(host, "\n".join(script) + "\n", cwd=cwd, what=f"the block at {block.where()}", trace=True)
        script.clear()


def copy_key(cluster, key_file, host, cwd):
    """The operator's scp of keys/NAME.keys to the host (through the test's machine)."""
    source = f"{cluster.names[OPERATOR_HOST]}:{OPERATOR_DIR}/keys/{key_file}"
    local = cluster.tmp / key_file
    de.run(["docker", "cp", source, str(local)], timeout=60)
    de.run(["docker", "cp", str(local), f"{cluster.names[host]}:{cwd}/{key_file}"], timeout=60)
    local.unlink()


def unit_settings(cluster, host, unit):
    """The [Service] lines of the installed unit file (the last of a repeated key)."""
    text = cluster.exec(host, f"cat /lib/systemd/system/{shlex.quote(unit)}.service").stdout
    service = text.split("[Service]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r"^(\w+)=(.*)$", service, re.M))


def start_unit(cluster, host, unit):
    """What `systemctl enable --now UNIT` starts, without systemd."""
    s = unit_settings(cluster, host, unit)
    user, group = s["User"], s.get("Group", s["User"])
    folders = [(f"/var/lib/{d}", s.get("StateDirectoryMode", "0755")) for d in s.get("StateDirectory", "").split()]
    folders += [(f"/var/log/{d}", s.get("LogsDirectoryMode", "0755")) for d in s.get("LogsDirectory", "").split()]
    out = f"/tmp/{unit}.out"         # where systemd's journal would have its output
    prepare = "".join(f"install -d -o {user} -g {group} -m {mode} {path}\n" for path, mode in folders)
    prepare += f"install -o {user} -g {group} -m 0640 /dev/null {out}\n"
    cluster.exec(host, prepare, what=f"making {unit}'s folders")
    de.run(["docker", "exec", "-d", "-u", f"{user}:{group}", "-w", s.get("WorkingDirectory", "/"),
            cluster.names[host], "sh", "-c",
            f"umask {s.get('UMask', '0022')}; exec {s['ExecStart']} >>{out} 2>&1"], timeout=60)


def run_until(cluster, block):
    """A foreground command the guide stops with Ctrl-C once it prints TEXT."""
    (host,) = block.hosts
    script = cluster.substitute(block.text).strip()
    out, pid = "/root/until.out", "/root/until.pid"
    de.run(["docker", "exec", "-d", "-w", "/root", cluster.names[host], "setsid", "sh", "-c",
            f"echo $$ > {pid}; exec {script} > {out} 2>&1"], timeout=60)
    deadline = time.monotonic() + 30
    while cluster.exec(host, f"grep -qF {shlex.quote(block.until)} {out}", check=False).returncode:
        assert time.monotonic() < deadline, f"{block.where()}: no {block.until!r} within 30 s:\n" \
                                            f"{cluster.exec(host, f'cat {out}', check=False).stdout}"
        time.sleep(0.2)
    cluster.exec(host, f"kill -INT -$(cat {pid})", what="Ctrl-C")
    deadline = time.monotonic() + 30
    while cluster.exec(host, f"kill -0 -$(cat {pid}) 2>/dev/null", check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{block.where()}: still running 30 s after Ctrl-C:\n" \
                                            f"{cluster.exec(host, f'cat {out}', check=False).stdout}"
        time.sleep(0.2)


# -- what the check shows --------------------------------------------------------------------

def members(listing):
    """pgha-ctl list's table: member -> (role, state)."""
    rows = re.findall(r"^\| (pgsql-\d) +\| [^|]+\| ([^|]+?) +\| ([^|]+?) +\|", listing, re.M)
    return {member: (role, state) for member, role, state in rows}


def wait_for_check(cluster, block, header, wanted, timeout, what, log_hosts):
    """Run the guide's check until one output has `header` in its first line
    and shows `wanted` (member -> (role, state)); return that output."""
    command = cluster.substitute(block.text)
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        proc = cluster.exec(OPERATOR_HOST, command, cwd=OPERATOR_DIR, check=False)
        seen = proc.stdout + proc.stderr
        if proc.returncode == 0 and header in seen.split("\n")[0] and \
                all(members(seen).get(m) == state for m, state in wanted.items()):
            return seen
        time.sleep(0.5)
    pytest.fail(f"{what}: the guide's check did not show {header!r} and {wanted} within {timeout} s; "
                f"last output:\n{seen}\n{cluster.all_logs(log_hosts)}")


def client_call(dsn, password, work, timeout=30):
    """work(cursor) in one transaction through the guide's DSN, committed; an
    error, or no commit within `timeout` s, is the returned failure text."""
    def call():
        with psycopg2.connect(dsn, password=password) as conn, conn.cursor() as cur:
            result = work(cur)
        conn.close()
        return result
    # Not `with`: leaving it would wait for a call that hangs, past `timeout`.
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(call)
    try:
        return future.result(timeout=timeout), None
    except concurrent.futures.TimeoutError:
        return None, f"no answer within {timeout} s"
    except psycopg2.Error as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        pool.shutdown(wait=False)


def test_the_guide_makes_a_cluster_that_fails_over(cluster):
    blocks = guide_blocks(README.read_text())
    timings = []
    for block in blocks:
        if block.kind in ("check", "dsn"):
            continue
        started = time.monotonic()
        run_block(cluster, block)
        timings.append(f"{block.line}: {time.monotonic() - started:.1f}s")
    print(f"\n[guide] blocks (README line: seconds): {', '.join(timings)}")
    check = next(b for b in blocks if b.kind == "check")
    dsn = cluster.substitute(next(b for b in blocks if b.kind == "dsn").text.strip())
    app_password = cluster.passwords["app_password"]

    started = time.monotonic()
    # Promotable: the arbiter knows the standby has every commit (only then may it
    # fail over to it; a Sync Standby is not yet promotable for a moment).
    wait_for_check(cluster, check, "primary pgsql-1, standby promotable",
                   {"pgsql-1": ("Leader", "running"), "pgsql-2": ("Sync Standby", "streaming")},
                   120, "the cluster after the guide", HOSTS)
    print(f"[guide] healthy {time.monotonic() - started:.1f} s after the last step")
    for host in ("pgsql-1", "pgsql-2"):     # PostgreSQL as the node's user, never root
        owner = cluster.exec(host, "stat -c %U /proc/$(head -n 1 /var/lib/postgresql/pgha/data/postmaster.pid)",
                             check=False)
        assert owner.stdout == "postgres\n", f"{host}'s postmaster runs as {owner.stdout!r} {owner.stderr}"

    token = secrets.token_hex(8)
    _, error = client_call(dsn, app_password, lambda cur: cur.execute(
        "CREATE TABLE guide_check (token text); INSERT INTO guide_check VALUES (%s)", (token,)))
    assert error is None, f"writing through the guide's DSN ({dsn}): {error}\n{cluster.all_logs()}"

    started = time.monotonic()
    de.run(["docker", "kill", cluster.names["pgsql-1"]], timeout=60)
    wait_for_check(cluster, check, "primary pgsql-2,", {"pgsql-2": ("Leader", "running")}, 90,
                   "after pgsql-1's host was killed", ("arbiter", "pgsql-2"))
    print(f"[guide] pgsql-2 the Leader {time.monotonic() - started:.1f} s after pgsql-1 was killed")

    def read_and_write(cur):
        cur.execute("SELECT token FROM guide_check")
        rows = [r[0] for r in cur.fetchall()]
        cur.execute("INSERT INTO guide_check VALUES ('after the failover')")
        cur.execute("SELECT host(inet_server_addr())")
        return rows, cur.fetchone()[0]
    result, error = client_call(dsn, app_password, read_and_write)
    assert error is None, f"through the guide's DSN after the failover: {error}\n" \
                          f"{cluster.all_logs(('arbiter', 'pgsql-2'))}"
    rows, server = result
    assert rows == [token], f"the row written before the failover: found {rows}, wanted [{token!r}]"
    assert server == cluster.addresses["pgsql-2"], f"the write after the failover went to {server}"
    rows, error = client_call(dsn, app_password, lambda cur: (cur.execute("SELECT count(*) FROM guide_check"),
                                                              cur.fetchone()[0])[1])
    assert (rows, error) == (2, None), f"after the failover's write: {rows} rows, {error}"
