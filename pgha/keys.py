"""Key files: generate them, rotate them, load them (refusing unsafe ones).

    python -m pgha.keys generate --dir DIR --nodes pgsql-1,pgsql-2 [--no-reader]
    python -m pgha.keys rotate   --dir DIR --member NAME   (add a next key)
    python -m pgha.keys retire   --dir DIR --member NAME   (the next key becomes the only one)
    python -m pgha.keys add-cluster --dir DIR --cluster C --nodes a,b
                                 (one more cluster of a many-cluster arbiter:
                                 "C/a", "C/b" in arbiter.keys, DIR/C/a.keys, DIR/C/b.keys)
    python -m pgha.keys tls      --dir DIR --nodes pgsql-1,pgsql-2 [--hosts IP,...]
                                 (a CA and TLS certificates: pgha.tls)

A key file is a keyring: a small JSON object, principal -> list of hex keys,
the current key first and, during a rotation, the next one after it:

    DIR/arbiter.keys    every node's key, "operator", and "reader" (if made)
    DIR/NODE.keys       the node's own key and "pair" (the node-to-node key)
    DIR/operator.keys   "operator": for pgha-ctl, held by operators only
    DIR/reader.keys     "reader": status only

Every file is created 0600 and refused when group- or world-readable. A
member accepts any key of a principal and signs with the first, so a key is
rotated in two rounds, each installed on every holder in any order:
`rotate` (everyone still signs with the old key, accepts both), then
`retire` (everyone signs with the new one).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import sys
from typing import Mapping, Sequence

from pgha import files, tls
from pgha.auth import OPERATOR, PAIR, READER, RESERVED, Credential, Keys, is_member_name
from pgha.topology import members_problem

KEY_BYTES = 32
MIN_KEY_BYTES = 16
SUFFIX = ".keys"


class KeyFileError(Exception):
    """A key file is missing, unsafe or malformed; the message names it (never a key)."""


# -- loading -------------------------------------------------------------------------------

def load(path: str) -> dict[str, Keys]:
    """The keyring in `path`; KeyFileError when missing, readable by others, or malformed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (make one with pgha-keys generate)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise KeyFileError(f"key file {path} is readable by group or others (mode "
                               f"{stat.S_IMODE(info.st_mode):04o}): chmod 600 {path}")
        data = f.read(1 << 20)
    return parse(data, path)


def parse(data: bytes, path: str) -> dict[str, Keys]:
    """A keyring from a key file's bytes (`path` names it in errors)."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"key file {path} is not a JSON keyring") from None
    if not isinstance(raw, dict) or not raw:
        raise KeyFileError(f"key file {path} must hold a JSON object of principal -> [hex keys]")
    ring: dict[str, Keys] = {}
    for principal, keys in raw.items():
        if not isinstance(keys, list) or not keys or len(keys) > 2:
            raise KeyFileError(f"key file {path}: {principal!r} must list one or two keys")
        decoded = []
        for key in keys:
            try:
                value = bytes.fromhex(key) if isinstance(key, str) else b""
            except ValueError:
                value = b""
            if len(value) < MIN_KEY_BYTES:
                raise KeyFileError(f"key file {path}: a key of {principal!r} is not hex of at least "
                                   f"{MIN_KEY_BYTES} bytes")
            decoded.append(value)
        ring[principal] = tuple(decoded)
    return ring


def _need(ring: Mapping[str, Keys], path: str, principal: str) -> Keys:
    if principal not in ring:
        raise KeyFileError(f"key file {path} holds no key for {principal!r}")
    return ring[principal]


def node_keys(path: str, name: str, cluster: str | None = None) -> tuple[Credential, Keys]:
    """A node's credential towards the arbiter, and the pair keys of the lease
    link. Its key id is "CLUSTER/NAME" when the file holds that (a cluster
    beside the arbiter's home cluster, pgha.clusters), else NAME."""
    ring = load(path)
    scoped = f"{cluster}/{name}" if cluster else None
    identity = scoped if scoped in ring else name
    return Credential(identity, _need(ring, path, identity)), _need(ring, path, PAIR)


def arbiter_keys(path: str, nodes: Sequence[str]) -> dict[str, Keys]:
    """The arbiter's keyring: every node's key and the operator's (reader optional)."""
    ring = load(path)
    for principal in (*nodes, OPERATOR):
        _need(ring, path, principal)
    return ring


def reader_keys(path: str) -> dict[str, Keys]:
    """Who may read a node's /cluster when its api_cluster_key_file is set:
    the reader's key, and the operator's if the file holds it."""
    ring = load(path)
    found = {p: ring[p] for p in (READER, OPERATOR) if p in ring}
    if not found:
        raise KeyFileError(f"key file {path} holds neither a {READER!r} nor an {OPERATOR!r} key")
    return found


def client_credential(path: str) -> Credential:
    """A tool's credential: the operator's if the file holds it, else the reader's."""
    return credential_in(load(path), path)


def credential_in(ring: Mapping[str, Keys], path: str) -> Credential:
    for identity in (OPERATOR, READER):
        if identity in ring:
            return Credential(identity, ring[identity])
    raise KeyFileError(f"key file {path} holds neither an {OPERATOR!r} nor a {READER!r} key")


# -- writing -------------------------------------------------------------------------------

def _body(ring: Mapping[str, Sequence[bytes]]) -> str:
    return json.dumps({p: [k.hex() for k in keys] for p, keys in ring.items()}, indent=1) + "\n"


def _write_new(path: str, ring: Mapping[str, Sequence[bytes]]) -> None:
    """Create `path` 0600 (never wider, even for a moment) and fsync it."""
    body = _body(ring)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(body)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: str, ring: Mapping[str, Sequence[bytes]]) -> None:
    info = os.lstat(path)
    # a node's file stays its user's; never through a link planted at a temporary name
    files.write_durably(path, _body(ring), mode=0o600, owner=(info.st_uid, info.st_gid))


def check_nodes(nodes: Sequence[str]) -> None:
    """KeyFileError unless `nodes` can be one cluster's members (pgha.topology)."""
    problem = members_problem(nodes)
    if problem:
        raise KeyFileError(f"--nodes {problem}")
    for node in nodes:
        if not is_member_name(node) or node in RESERVED:
            raise KeyFileError(f"node name {node!r} is not allowed (letters, digits, '_-.'; "
                               f"not one of {', '.join(RESERVED)})")


def generate(folder: str, nodes: Sequence[str], reader: bool = True) -> list[str]:
    """Write a fresh set of key files into `folder`; refuse to overwrite any."""
    check_nodes(nodes)
    new = lambda: secrets.token_bytes(KEY_BYTES)    # noqa: E731
    node_key = {node: (new(),) for node in nodes}
    pair, operator = (new(),), (new(),)
    files: dict[str, dict[str, Keys]] = {
        "arbiter": {**node_key, OPERATOR: operator},
        OPERATOR: {OPERATOR: operator},
    }
    for node in nodes:
        files[node] = {node: node_key[node], PAIR: pair}
    if reader:
        files[READER] = {READER: (new(),)}
        files["arbiter"][READER] = files[READER][READER]
    paths = {member: os.path.join(folder, member + SUFFIX) for member in files}
    existing = [p for p in paths.values() if os.path.lexists(p)]
    if existing:
        raise KeyFileError(f"{existing[0]} already exists: remove the old key files or choose another --dir")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for member, ring in files.items():
        _write_new(paths[member], ring)
    return list(paths.values())


def add_cluster(folder: str, cluster: str, nodes: Sequence[str]) -> list[str]:
    """Keys for one more cluster served by the arbiter whose key files are in
    `folder` (its `clusters` setting): "CLUSTER/NODE" keys added to
    arbiter.keys, and folder/CLUSTER/NODE.keys (that key and the cluster's
    own pair key) for each node. The operator and reader keys stay shared."""
    if not is_member_name(cluster) or cluster in RESERVED:
        raise KeyFileError(f"cluster name {cluster!r} is not allowed (letters, digits, '_-.')")
    check_nodes(nodes)
    arbiter_path = os.path.join(folder, "arbiter" + SUFFIX)
    ring = load(arbiter_path)
    ids = [f"{cluster}/{node}" for node in nodes]
    if any(i in ring for i in ids):
        raise KeyFileError(f"{arbiter_path} already holds keys of cluster {cluster!r}")
    sub = os.path.join(folder, cluster)
    paths = [os.path.join(sub, node + SUFFIX) for node in nodes]
    existing = [p for p in paths if os.path.lexists(p)]
    if existing:
        raise KeyFileError(f"{existing[0]} already exists: remove the old key files or choose another cluster")
    node_key = {i: (secrets.token_bytes(KEY_BYTES),) for i in ids}
    pair = (secrets.token_bytes(KEY_BYTES),)
    os.makedirs(sub, mode=0o700, exist_ok=True)
    for path, identity in zip(paths, ids):
        _write_new(path, {identity: node_key[identity], PAIR: pair})
    _replace(arbiter_path, {**ring, **node_key})     # last: a node's file exists before the arbiter expects it
    return [*paths, arbiter_path]


def _holders(folder: str, member: str) -> list[tuple[str, dict[str, Keys]]]:
    names = sorted(n for n in os.listdir(folder) if n.endswith(SUFFIX))
    holders = [(p, load(p)) for p in (os.path.join(folder, n) for n in names)]
    holders = [(p, ring) for p, ring in holders if member in ring]
    if not holders:
        raise KeyFileError(f"no key file in {folder} holds {member!r}")
    return holders


def rotate(folder: str, member: str) -> list[str]:
    """Add a next key for `member` in every file of `folder` that holds it."""
    holders = _holders(folder, member)
    if any(len(ring[member]) > 1 for _, ring in holders):
        raise KeyFileError(f"{member!r} already has a next key: run retire first")
    key = secrets.token_bytes(KEY_BYTES)
    for path, ring in holders:
        _replace(path, {**ring, member: (ring[member][0], key)})
    return [p for p, _ in holders]


def retire(folder: str, member: str) -> list[str]:
    """Make `member`'s next key its only key, in every file that holds it."""
    holders = _holders(folder, member)
    if any(len(ring[member]) < 2 for _, ring in holders):
        raise KeyFileError(f"{member!r} has no next key in every file: run rotate first")
    for path, ring in holders:
        _replace(path, {**ring, member: (ring[member][1],)})
    return [p for p, _ in holders]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgha-keys", description="Generate and rotate the cluster's keys")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="a fresh set of key files, one per member")
    gen.add_argument("--dir", required=True)
    gen.add_argument("--nodes", required=True, help="the two node names, comma-separated")
    gen.add_argument("--no-reader", action="store_true", help="make no read-only (status) credential")
    for name in ("rotate", "retire"):
        cmd = sub.add_parser(name, help="add a next key" if name == "rotate" else "keep only the next key")
        cmd.add_argument("--dir", required=True)
        cmd.add_argument("--member", required=True, help="a node name, operator, reader or pair")
    more = sub.add_parser("add-cluster", help="keys for one more cluster of a many-cluster arbiter")
    more.add_argument("--dir", required=True, help="the folder holding arbiter.keys")
    more.add_argument("--cluster", required=True, help="the cluster's name (a key of the arbiter's clusters)")
    more.add_argument("--nodes", required=True, help="its two node names, comma-separated")
    cert = sub.add_parser("tls", help="a CA and a TLS certificate for the arbiter, each node and the operator")
    cert.add_argument("--dir", required=True)
    cert.add_argument("--nodes", required=True, help="the two node names, comma-separated")
    cert.add_argument("--hosts", default="", help="addresses the members are reached at (comma-separated; "
                                                 "recorded in the certificates, not checked by pgha)")
    args = parser.parse_args(argv)
    try:
        if args.command == "tls":
            nodes = [n.strip() for n in args.nodes.split(",")]
            check_nodes(nodes)
            written = tls.generate(args.dir, ["arbiter", *nodes, OPERATOR],
                                   [h.strip() for h in args.hosts.split(",") if h.strip()])
        elif args.command == "add-cluster":
            written = add_cluster(args.dir, args.cluster, [n.strip() for n in args.nodes.split(",")])
        elif args.command == "generate":
            written = generate(args.dir, [n.strip() for n in args.nodes.split(",")], reader=not args.no_reader)
        else:
            written = (rotate if args.command == "rotate" else retire)(args.dir, args.member)
    except (KeyFileError, tls.TLSError, OSError) as exc:
        print(f"pgha-keys: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
