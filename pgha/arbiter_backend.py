"""The arbiter's state backend from its settings, chosen from one registry
(BACKENDS): the state file, or etcd with leadership among several arbiter
processes; and the service of every cluster served (arbiter.py wires these).

A backend is how one cluster's store is made and, for a store several
arbiter processes share, how they elect the one that acts. Adding one (say
Consul) is a StateStore, a leadership (pgha.election.LeaderElection) and
one line in BACKENDS (and its name in settings' state_backend check).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pgha import store
from pgha.arbiter import Arbiter, StateFileError
from pgha.arbiter_service import ArbiterService
from pgha.clusters import ClusterSpec
from pgha.election import LeaderElection

# (settings, cluster name, its state file) -> its store
StoreMaker = Callable[[Any, str, str], store.StateStore]
# (the Arbiters, settings) -> (the service that answers only while leading, the leadership to start and stop)
Leader = Callable[[Mapping[str, Arbiter], Any], "tuple[ArbiterService, LeaderElection]"]


@dataclass(frozen=True)
class Backend:
    make_store: StoreMaker
    lead: Leader | None = None      # None: one arbiter process acts alone


def _file_store(settings: Any, name: str, state_file: str) -> store.StateStore:
    return store.FileStore(state_file)


def _etcd_store(settings: Any, name: str, state_file: str) -> store.StateStore:
    """Its keys <etcd_prefix>/<cluster>/... in etcd."""
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import EtcdStore
    return EtcdStore(EtcdClient(EtcdOptions.from_settings(settings)), settings.etcd_prefix, name)


def _etcd_lead(arbiters: Mapping[str, Arbiter], settings: Any) -> tuple[ArbiterService, LeaderElection]:
    """ONE leadership per arbiter service, not per cluster: its key stays
    <etcd_prefix>/<cluster_name>/leader (the service's name), and every
    cluster's writes are guarded by its term (etcd refuses a deposed leader's)."""
    from pgha.arbiter_leader import ActingRecord, LeadingArbiter
    from pgha.etcd_client import EtcdClient, EtcdOptions
    from pgha.etcd_store import EtcdStore, leader_key, leadership_guard
    from pgha.leadership import Leadership
    key = leader_key(settings.etcd_prefix, settings.cluster_name)
    record = ActingRecord(settings.acting_record_file) if settings.acting_record_file else None
    # Its own client: the campaign's requests never queue behind a decision's.
    leadership = Leadership(EtcdClient(EtcdOptions.from_settings(settings)), key, advertised(settings),
                            settings.etcd_lease_ttl, record=record)
    for arbiter in arbiters.values():
        if not isinstance(arbiter.store, EtcdStore):
            raise StateFileError(f"{arbiter.store}: leadership on etcd needs the decision in etcd")
        arbiter.store.guard = leadership_guard(key, leadership.term)
    leading = {name: LeadingArbiter(arbiter, leadership, record) for name, arbiter in arbiters.items()}
    return ArbiterService(leading, settings.cluster_name, deciders=arbiters, leadership=leadership), leadership


BACKENDS: dict[str, Backend] = {
    "file": Backend(_file_store),
    "etcd": Backend(_etcd_store, _etcd_lead),
}


def make_store(settings: Any, cluster: ClusterSpec | None = None) -> store.StateStore:
    """One cluster's store (None: the one cluster of the simple settings)."""
    name = settings.cluster_name if cluster is None else cluster.name
    state_file = settings.state_file if cluster is None else cluster.state_file
    return BACKENDS[settings.state_backend].make_store(settings, name, state_file)


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


def serve(arbiters: Mapping[str, Arbiter], settings: Any) -> tuple[ArbiterService, LeaderElection | None]:
    """(the service of every cluster, the leadership to start and stop, or
    None when this backend has one arbiter process acting alone)."""
    lead = BACKENDS[settings.state_backend].lead
    if lead is None:
        return ArbiterService(dict(arbiters), settings.cluster_name), None
    return lead(arbiters, settings)
