"""The arbiter's state backend from its settings: the state file, or etcd
with leadership among several arbiter processes (arbiter.py wires these)."""
from __future__ import annotations

from typing import Any

from pgha import store
from pgha.arbiter import Arbiter


def make_store(settings: Any) -> store.StateStore:
    if settings.state_backend != "etcd":
        return store.FileStore(settings.state_file)
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import EtcdStore
    return EtcdStore(EtcdClient(EtcdOptions.from_settings(settings)), settings.etcd_prefix, settings.cluster_name)


def advertised(settings: Any) -> str:
    return settings.advertise_address or f"{settings.listen_host}:{settings.listen_port}"


def lead(arbiter: Arbiter, settings: Any) -> tuple[Any, Any]:
    """(the arbiter that answers only while it leads, its Leadership to start and stop)."""
    from pgha.arbiter_leader import ActingRecord, LeadingArbiter
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import leader_key, leadership_guard
    from pgha.leadership import Leadership
    etcd_store = arbiter.store
    key = leader_key(settings.etcd_prefix, settings.cluster_name)
    record = ActingRecord(settings.acting_record_file) if settings.acting_record_file else None
    # Its own client: the campaign's requests never queue behind a decision's.
    leadership = Leadership(EtcdClient(EtcdOptions.from_settings(settings)), key, advertised(settings),
                            settings.etcd_lease_ttl, record=record)
    etcd_store.guard = leadership_guard(key, leadership.term)       # type: ignore[attr-defined]
    return LeadingArbiter(arbiter, leadership, record), leadership
