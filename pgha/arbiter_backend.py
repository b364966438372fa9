"""The arbiter's state backend from its settings: the state file, or etcd
with leadership among several arbiter processes; and the service of every
cluster served (arbiter.py wires these)."""
from __future__ import annotations

from typing import Any, Mapping

from pgha import store
from pgha.arbiter import Arbiter, StateFileError
from pgha.arbiter_service import ArbiterService
from pgha.clusters import ClusterSpec


def make_store(settings: Any, cluster: ClusterSpec | None = None) -> store.StateStore:
    """One cluster's store: its state file, or its keys <etcd_prefix>/<cluster>/... in etcd."""
    name = settings.cluster_name if cluster is None else cluster.name
    if settings.state_backend != "etcd":
        return store.FileStore(settings.state_file if cluster is None else cluster.state_file)
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import EtcdStore
    return EtcdStore(EtcdClient(EtcdOptions.from_settings(settings)), settings.etcd_prefix, name)


def build(settings: Any, specs: Mapping[str, ClusterSpec], init: bool = False, rebuild: bool = False,
          only: str | None = None) -> dict[str, Arbiter]:
    """An Arbiter per cluster. --init/--rebuild apply to `only` (a cluster's
    name) or, when None, to every cluster: --init creates each missing state;
    --rebuild rebuilds each missing one (the others load as usual)."""
    if only is not None and only not in specs:
        raise StateFileError(f"--cluster {only!r}: this arbiter does not serve it (it serves "
                             f"{', '.join(sorted(specs))})")
    stores = {name: make_store(settings, spec) for name, spec in specs.items()}
    rebuilding: set[str] = set()
    if rebuild:
        rebuilding = {only} if only is not None else {n for n, s in stores.items() if s.load() is None}
        if not rebuilding:
            rebuilding = set(specs)     # every state exists: each refuses to be replaced (one clear error)
    return {name: Arbiter(settings, state_store=stores[name], cluster=spec,
                          init=init and (only is None or only == name), rebuild=name in rebuilding)
            for name, spec in specs.items()}


def advertised(settings: Any) -> str:
    return settings.advertise_address or f"{settings.listen_host}:{settings.listen_port}"


def lead(arbiters: Mapping[str, Arbiter], settings: Any) -> tuple[ArbiterService, Any]:
    """(the service whose clusters answer only while this arbiter leads, its
    Leadership to start and stop). ONE leadership per arbiter service, not per
    cluster: its key stays <etcd_prefix>/<cluster_name>/leader (the service's
    name), and every cluster's writes are guarded by its term."""
    from pgha.arbiter_leader import ActingRecord, LeadingArbiter
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import leader_key, leadership_guard
    from pgha.leadership import Leadership
    key = leader_key(settings.etcd_prefix, settings.cluster_name)
    record = ActingRecord(settings.acting_record_file) if settings.acting_record_file else None
    # Its own client: the campaign's requests never queue behind a decision's.
    leadership = Leadership(EtcdClient(EtcdOptions.from_settings(settings)), key, advertised(settings),
                            settings.etcd_lease_ttl, record=record)
    for arbiter in arbiters.values():
        arbiter.store.guard = leadership_guard(key, leadership.term)       # type: ignore[attr-defined]
    leading = {name: LeadingArbiter(arbiter, leadership, record) for name, arbiter in arbiters.items()}
    return ArbiterService(leading, settings.cluster_name, deciders=arbiters), leadership
