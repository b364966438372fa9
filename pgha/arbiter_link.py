"""The node's link to the arbiter service: one address, or several arbiter
processes of which one leads (state_backend = "etcd" on the arbiters).

request() sends to the arbiter that answered last; one that answers
{"type":"error","error":"not the leader","leader":"host:port"} (signed like
any reply) sends us to the hinted leader, if it is one of the configured
addresses, then to the others in order. Each request tries every address at
most once, so a heartbeat costs at most len(addresses) connection timeouts.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgha import auth, protocol

if TYPE_CHECKING:     # ssl only in annotations: it loads OpenSSL (~4 MB), see pgha/tls.py
    import ssl

NOT_LEADER = "not the leader"


def parse_address(text: str, default_port: int | None = None) -> tuple[str, int]:
    """("host", port) from "host:port" ("[v6]:port" too); ValueError naming it otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep and default_port is not None:
        host, port = text, str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not an address host:port: {text!r}")
    return host, int(port)


def addresses_from_settings(settings: Any) -> list[tuple[str, int]]:
    """arbiter_hosts when set, else [arbiter_host:arbiter_port]."""
    listed = getattr(settings, "arbiter_hosts", None)
    if listed:
        return [parse_address(a, settings.arbiter_port) for a in listed]
    return [(settings.arbiter_host, settings.arbiter_port)]


def is_not_leader(reply: dict[str, Any]) -> bool:
    """A refusal from an arbiter that does not lead, or its own (second-hand) status."""
    if reply.get("type") == "error" and reply.get("error") == NOT_LEADER:
        return True
    role = reply.get("arbiter")
    return reply.get("type") == "status" and isinstance(role, dict) and role.get("leader") is False


class ArbiterLink:
    def __init__(self, addresses: list[tuple[str, int]], timeout: float,
                 credential: auth.Credential | None = None, tls_context: ssl.SSLContext | None = None) -> None:
        if not addresses:
            raise ValueError("no arbiter address")
        self.addresses = list(dict.fromkeys(addresses))
        self.timeout = timeout
        self.credential = credential
        self._connections = {a: protocol.Connection(a[0], a[1], timeout, credential, tls_context,
                                                    name="the arbiter at %s:%s" % a) for a in self.addresses}
        self.current = self.addresses[0]     # the last one that answered as leader (or at all)

    @property
    def address(self) -> tuple[str, int]:
        return self.current

    def __str__(self) -> str:
        return "%s:%s" % self.current

    @property
    def clock_skew(self) -> float | None:
        """The current arbiter's wall clock minus ours, s (None: not heard yet)."""
        return self._connections[self.current].clock.skew

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """The leader's reply; a not-the-leader reply only when no arbiter leads.
        Raises what Connection.request raises when no arbiter answered."""
        tried: list[tuple[str, int]] = []
        queue = [self.current] + [a for a in self.addresses if a != self.current]
        last_reply: dict[str, Any] | None = None
        last_error: Exception | None = None
        while queue:
            address = queue.pop(0)
            if address in tried:
                continue
            tried.append(address)
            try:
                reply = self._connections[address].request(message)
            except (OSError, protocol.ProtocolError) as exc:
                if isinstance(exc, auth.AuthError):
                    raise
                last_error = exc
                continue
            if not is_not_leader(reply):
                self.current = address
                return reply
            last_reply = reply
            hint = _hinted(reply, self.addresses)
            if hint is not None and hint not in tried:
                queue.insert(0, hint)
        if last_reply is not None:
            return last_reply
        assert last_error is not None
        raise last_error

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()


def _hinted(reply: dict[str, Any], known: list[tuple[str, int]]) -> tuple[str, int] | None:
    leader = reply.get("leader")
    if not isinstance(leader, str):
        return None
    try:
        address = parse_address(leader)
    except ValueError:
        return None
    return address if address in known else None


def call(addresses: list[tuple[str, int]], message: dict[str, Any], timeout: float = 3.0,
         credential: auth.Credential | None = None, tls_context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """One request to the leading arbiter, on fresh connections (tools, the node's status watcher)."""
    link = ArbiterLink(addresses, timeout, credential, tls_context)
    try:
        return link.request(message)
    finally:
        link.close()
