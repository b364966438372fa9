"""A small typed layer over etcd3gw (etcd's v3 gRPC gateway, JSON over HTTP).

etcd3gw talks to one endpoint and knows neither authentication nor a list of
members; this adds both: each call goes to the endpoint that answered last,
then to the others, and a user/password gets a token (/v3/auth/authenticate)
sent in the Authorization header. Every failure is one EtcdUnavailable line
naming the endpoints, never a traceback. Keys and values travel base64 encoded
(the gateway's JSON form of bytes).
"""
from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import etcd3gw                     # type: ignore[import-untyped]
import requests
from etcd3gw import exceptions as etcd_errors   # type: ignore[import-untyped]


class EtcdUnavailable(Exception):
    """No endpoint answered (or etcd refused the call); the message is one line."""


@dataclass(frozen=True)
class EtcdOptions:
    endpoints: tuple[str, ...]           # "http://127.0.0.1:2379", "https://etcd-1:2379"
    timeout: float = 1.0                 # per request and endpoint
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password: str | None = None          # secret: never logged

    @classmethod
    def from_settings(cls, settings: Any) -> EtcdOptions:
        return cls(endpoints=tuple(settings.etcd_endpoints), timeout=float(settings.etcd_timeout),
                   ca_file=settings.etcd_ca_file, cert_file=settings.etcd_cert_file,
                   key_file=settings.etcd_key_file, user=settings.etcd_user, password=settings.etcd_password)


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(key=unb64(raw["key"]).decode(), value=unb64(raw.get("value", "")),
                    create_revision=int(raw.get("create_revision", 0)),
                    mod_revision=int(raw.get("mod_revision", 0)), lease=int(raw.get("lease", 0)))


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int                        # the store's revision after the transaction
    ranges: tuple[tuple[KeyValue, ...], ...]   # the kvs of each range response, in order


class _Session(requests.Session):
    """A session whose requests time out by default: etcd3gw before 2.4 passes
    no timeout (a dead endpoint would hang a call), later ones pass None when
    the client was made without one."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


class EtcdClient:
    def __init__(self, options: EtcdOptions) -> None:
        if not options.endpoints:
            raise ValueError("no etcd endpoints")
        self.options = options
        self._session = _Session(options.timeout)
        if options.ca_file:
            self._session.verify = options.ca_file
        if options.cert_file and options.key_file:
            self._session.cert = (options.cert_file, options.key_file)
        self._clients = [self._client(url) for url in options.endpoints]
        self._current = 0
        self._lock = threading.Lock()

    def _client(self, url: str) -> Any:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.hostname is None:
            raise ValueError(f"not an etcd endpoint URL: {url!r}")
        # Only the arguments every etcd3gw since 2.0 (Debian bookworm's) takes; the
        # shared session (TLS, the auth token, the timeout) is put in afterwards.
        client = etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                                     api_path="/v3/")
        client.session = self._session
        return client

    def __str__(self) -> str:
        return ",".join(self.options.endpoints)

    # -- calls -----------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One gateway call (path under /v3/), on the first endpoint that answers."""
        problems = []
        with self._lock:
            first = self._current
        for step in range(len(self._clients)):
            index = (first + step) % len(self._clients)
            client = self._clients[index]
            try:
                if self.options.user and "Authorization" not in self._session.headers:
                    self._authenticate(client)
                try:
                    reply = client.post(client.get_url(path), json=body)
                except etcd_errors.Etcd3Exception as exc:
                    if self.options.user and "token" in str(getattr(exc, "detail_text", exc)).lower():
                        self._session.headers.pop("Authorization", None)     # expired: once more
                        self._authenticate(client)
                        reply = client.post(client.get_url(path), json=body)
                    else:
                        raise
            except (etcd_errors.Etcd3Exception, requests.RequestException, ValueError, KeyError) as exc:
                problems.append(f"{self.options.endpoints[index]}: {_describe(exc)}")
                continue
            with self._lock:
                self._current = index
            return dict(reply)
        raise EtcdUnavailable(f"etcd unreachable ({'; '.join(problems)})")

    def _authenticate(self, client: Any) -> None:
        reply = client.post(client.get_url("/auth/authenticate"),
                            json={"name": self.options.user, "password": self.options.password})
        self._session.headers["Authorization"] = reply["token"]

    def get(self, key: str) -> KeyValue | None:
        reply = self.post("/kv/range", {"key": b64(key)})
        kvs = reply.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]]) -> TxnResult:
        reply = self.post("/kv/txn", {"compare": compare, "success": success, "failure": failure})
        ranges = tuple(tuple(_kv(kv) for kv in (r["response_range"].get("kvs") or []))
                       for r in reply.get("responses") or [] if "response_range" in r)
        return TxnResult(succeeded=bool(reply.get("succeeded", False)),
                         revision=int(reply.get("header", {}).get("revision", 0)), ranges=ranges)

    def lease_grant(self, ttl: int) -> tuple[int, int]:
        """(lease id, the TTL etcd granted): etcd raises a TTL below its own
        minimum (1.5 election timeouts) to that minimum."""
        reply = self.post("/lease/grant", {"TTL": ttl})
        if reply.get("error"):
            raise EtcdUnavailable(f"etcd refused a lease: {reply['error']}")
        return int(reply["ID"]), int(reply.get("TTL", ttl))

    def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL in seconds; <= 0 once it has expired."""
        reply = self.post("/lease/keepalive", {"ID": lease})
        return int(reply.get("result", {}).get("TTL", -1))

    def lease_revoke(self, lease: int) -> None:
        self.post("/kv/lease/revoke", {"ID": lease})

    def close(self) -> None:
        self._session.close()


def _describe(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__} {getattr(exc, 'detail_text', '') or exc}".split())
    return text if len(text) <= 160 else text[:160] + "..."


# -- transaction pieces ------------------------------------------------------------------------

def compare_create_revision(key: str, revision: int) -> dict[str, Any]:
    """True while `key` is the one created at `revision` (0: absent)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def compare_mod_revision(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def range_of(key: str) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}
