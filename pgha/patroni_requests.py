"""Patroni's REST API write requests, as our request kinds.

A node whose settings set api_authentication (HTTP Basic, as Patroni's
restapi.authentication) and api_operator_key_file answers the writes
Patroni's tools and scripts send, with Patroni's bodies: the node checks
the credential, turns the request into ours with this table, signs it with
the operator key and sends it to the arbiter, which decides as it does for
pgha-ctl. Pure: the method, path and JSON body in, our requests out (or
BadRequest naming the problem, answered 400).

    POST /switchover {"leader", "candidate", "scheduled_at"}   switchover (--primary, --to, --at)
    POST /failover {"candidate", "leader"}                      failover --to
    DELETE /switchover                                          flush switchover
    POST /restart {"restart_pending", "schedule"}               restart of this member (--pending, --at)
    DELETE /restart                                             flush restart (this member's)
    POST /reinitialize {"force"}                                reinit of this member
    POST /reload                                                reload (the arbiter, then every node)
    PATCH /config {"pause", "postgresql": {"parameters"}}       pause / resume, config (null removes)

Not served (400, naming it): restart conditions on role or version, and
/config keys beyond pause and
postgresql.parameters (our timings are the arbiter's settings).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pgha import cluster_config
from pgha.limits import clip


class BadRequest(ValueError):
    """A Patroni request we cannot serve as asked: one line, HTTP 400."""


@dataclass(frozen=True)
class Translated:
    requests: tuple[dict[str, Any], ...]    # ours, in order (unsigned)
    wait_for_primary: bool = False          # a switchover or failover now: answer once it is done (Patroni does)
    only_if_pending: bool = False           # restart_pending: nothing to do unless a restart is pending
    accepted: int = 200                     # the HTTP code once the arbiter accepted (202: scheduled, as Patroni)


def translate(method: str, path: str, body: Any, member: str) -> Translated:
    """Our requests for Patroni's `method path` with JSON `body` ({} when
    empty), sent to the REST API of `member`."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {clip(repr(body), 40)}")
    route = ROUTES.get((method, path.rstrip("/") or "/"))
    if route is None:
        raise BadRequest(f"{method} {clip(path, 80)} is not a Patroni write this API serves "
                         f"({', '.join(f'{m} {p}' for m, p in ROUTES)})")
    return route(body, member)


def _known(body: dict[str, Any], allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(f"{what}: {', '.join(clip(repr(k), 40) for k in unknown)} not served here "
                         f"(served: {', '.join(allowed) or 'nothing'})")


def _name(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key!r} must be a member's name, got {clip(repr(value), 40)}")
    return value or None


def _time(value: Any, key: str) -> float:
    """Patroni's scheduled_at, schedule: an ISO 8601 time with its offset (as Patroni requires)."""
    if not isinstance(value, str):
        raise BadRequest(f"{key!r} must be an ISO 8601 time, got {clip(repr(value), 40)}")
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{key!r} is not an ISO 8601 time: {clip(value, 60)}") from None
    if when.tzinfo is None:
        raise BadRequest(f"{key!r} must name its time zone (e.g. 2026-12-07T10:00:00+00:00), as Patroni asks")
    return when.astimezone(timezone.utc).timestamp()


def _switchover(body: dict[str, Any], member: str) -> Translated:
    _known(body, ("leader", "candidate", "scheduled_at"), "switchover")
    leader, candidate = _name(body, "leader"), _name(body, "candidate")
    if not leader:      # as Patroni: the caller says whom it takes over from
        raise BadRequest("switchover: 'leader' is required (the current primary)")
    request: dict[str, Any] = {"type": "switchover", "primary": leader}
    if candidate:
        request["to"] = candidate
    if body.get("scheduled_at") is not None:
        request["at"] = _time(body["scheduled_at"], "scheduled_at")
        return Translated((request,), accepted=202)
    return Translated((request,), wait_for_primary=True)


def _failover(body: dict[str, Any], member: str) -> Translated:
    _known(body, ("leader", "candidate"), "failover")
    candidate = _name(body, "candidate")
    if not candidate:
        raise BadRequest("failover: 'candidate' is required (the member to promote)")
    request: dict[str, Any] = {"type": "failover", "to": candidate}
    leader = _name(body, "leader")
    if leader:
        request["primary"] = leader
    return Translated((request,), wait_for_primary=True)


def _restart(body: dict[str, Any], member: str) -> Translated:
    _known(body, ("restart_pending", "timeout", "schedule"), "restart")
    pending = body.get("restart_pending", False)
    if not isinstance(pending, bool):
        raise BadRequest(f"'restart_pending' must be true or false, got {clip(repr(pending), 40)}")
    if body.get("schedule") is not None:
        # Kept by the arbiter; restart_pending is judged when it is due (Patroni's too).
        request = {"type": "restart", "member": member, "at": _time(body["schedule"], "schedule"),
                   **({"pending": True} if pending else {})}
        return Translated((request,), accepted=202)
    return Translated(({"type": "restart", "member": member},), only_if_pending=pending)


def _reinitialize(body: dict[str, Any], member: str) -> Translated:
    _known(body, ("force", "from_leader"), "reinitialize")
    return Translated(({"type": "reinit", "member": member},))


def _config(body: dict[str, Any], member: str) -> Translated:
    _known(body, ("pause", "postgresql"), "config (timings are the arbiter's settings)")
    made: list[dict[str, Any]] = []
    if "postgresql" in body:    # first, and checked here: a refused change leaves the pause alone too
        section = body["postgresql"]
        if not isinstance(section, dict):
            raise BadRequest("'postgresql' must be an object holding 'parameters'")
        _known(section, ("parameters",), "config: postgresql")
        parameters = section.get("parameters")
        if not isinstance(parameters, dict):
            raise BadRequest("'postgresql.parameters' must be an object of name: value (null removes)")
        problem = cluster_config.parameters_problem(parameters, removing=True)
        if problem:
            raise BadRequest(f"config: {problem}")
        made.append({"type": "config", "parameters": parameters})
    if "pause" in body:
        if not isinstance(body["pause"], bool) and body["pause"] is not None:
            raise BadRequest(f"'pause' must be true or false, got {clip(repr(body['pause']), 40)}")
        made.append({"type": "pause" if body["pause"] else "resume"})
    if not made:
        raise BadRequest("config: nothing to change (served: pause, postgresql.parameters)")
    return Translated(tuple(made))


ROUTES = {
    ("POST", "/switchover"): _switchover,
    ("POST", "/failover"): _failover,
    ("DELETE", "/switchover"): lambda body, member: Translated(({"type": "flush", "what": "switchover"},)),
    ("POST", "/restart"): _restart,
    # This member's scheduled restart (and its order not carried out), as Patroni's.
    ("DELETE", "/restart"): lambda body, member: Translated(({"type": "flush", "what": "restart", "member": member},)),
    ("POST", "/reinitialize"): _reinitialize,
    ("POST", "/reload"): lambda body, member: Translated(({"type": "reload"},), accepted=202),
    ("PATCH", "/config"): _config,
}
