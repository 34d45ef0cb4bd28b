"""Membership traffic as Prometheus metrics, read at scrape time from the SWIM driver and the peer connections.

peerserve_membership_messages_total{direction="sent|received", kind}   SWIM exchanges (and "state" fetches)
peerserve_membership_suspicion_proofs_total{outcome="checked|refused|gated"}  signed suspicions relayed to us
                                                                      (refused: forged, tampered or stale: a member
                                                                      lies; gated: checked, but a relay within 60 s
                                                                      of this run's start does not count: R3)
peerserve_membership_dead_proofs_total{outcome="checked|refused|gated"}  the same for signed dead declarations
peerserve_peer_connections_opened_total                               connections (TLS handshakes) we opened
peerserve_peer_connections_idle                                       kept-alive connections to peers now
peerserve_membership_candidates_replaced_total                        candidates whose slot a newer hint took (a full
                                                                      table: a stranger's flood of mDNS adverts)
peerserve_peer_stale_boot_total{side="refused|retried"}              signed requests naming another boot id than this
                                                                      run's, refused here; and our requests retried
                                                                      once with a peer's new boot id (its refusal)
peerserve_mdns_adverts_total{outcome}                                 mDNS adverts by outcome (hinted, other_cluster,
                                                                      malformed, own_id, no_ipv4, unanswered,
                                                                      resolve_dropped)
peerserve_revocation_lists_total{outcome}                             operator-CA mode: revocation lists fetched from
                                                                      members, by outcome (accepted; refused: older,
                                                                      conflict, forged, damaged, oversized, unusable,
                                                                      unwritable; failed: no whole list came back;
                                                                      preempted: given up for a stamp more
                                                                      members advertise)
peerserve_revocation_stamp                                            operator-CA mode: the stamp of the list in force
                                                                      (-1: none), to compare across boards
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from agent.discovery.service import Discovery
    from agent.peer_client import PeerClient


class MembershipCollector(Collector):
    """Reads ``discovery``'s counters when scraped: nothing is kept here."""

    def __init__(self, discovery: Discovery) -> None:
        self.discovery = discovery

    def collect(self) -> Iterable[Metric]:
        swim = self.discovery.swim
        messages = CounterMetricFamily("peerserve_membership_messages", "SWIM exchanges by direction and kind",
                                       labels=["direction", "kind"])  # fmt: skip
        for direction, counts in (("sent", swim.sent), ("received", swim.received)):
            for kind, n in sorted(counts.items()):
                messages.add_metric([direction, kind], n)
        yield messages
        proofs = CounterMetricFamily("peerserve_membership_suspicion_proofs", "Signed suspicions checked, by outcome",
                                     labels=["outcome"])  # fmt: skip
        proofs.add_metric(["checked"], swim.proofs.checked)
        proofs.add_metric(["refused"], swim.proofs.refused)
        proofs.add_metric(["gated"], swim.proofs.gated)
        yield proofs
        dead = CounterMetricFamily("peerserve_membership_dead_proofs", "Signed dead declarations checked, by outcome",
                                   labels=["outcome"])  # fmt: skip
        dead.add_metric(["checked"], swim.dead_proofs.checked)
        dead.add_metric(["refused"], swim.dead_proofs.refused)
        dead.add_metric(["gated"], swim.dead_proofs.gated)
        yield dead
        conns = self.discovery.peers.connections
        yield CounterMetricFamily("peerserve_peer_connections_opened", "Peer connections (TLS handshakes) opened",
                                  value=conns.opened)  # fmt: skip
        yield GaugeMetricFamily("peerserve_peer_connections_idle", "Kept-alive connections to peers",
                                value=conns.idle_count)  # fmt: skip
        yield CounterMetricFamily("peerserve_membership_candidates_replaced",
                                  "Candidates whose slot a newer hint took (a full table)",
                                  value=swim.core.replaced)  # fmt: skip
        adverts = CounterMetricFamily("peerserve_mdns_adverts", "mDNS adverts seen, by outcome", labels=["outcome"])
        for outcome, n in sorted(self.discovery.mdns.items()):
            adverts.add_metric([outcome], n)
        yield adverts
        sync = self.discovery.revocations
        if sync is not None:
            lists = CounterMetricFamily("peerserve_revocation_lists", "Revocation lists fetched from members, by "
                                        "outcome", labels=["outcome"])  # fmt: skip
            for outcome, n in sorted(sync.outcomes.items()):
                lists.add_metric([outcome], n)
            yield lists
            own = sync.advert()
            yield GaugeMetricFamily("peerserve_revocation_stamp", "Stamp of the revocation list in force (-1: none)",
                                    value=own[0] if own is not None else -1)  # fmt: skip


class StaleBootCollector(Collector):
    """Reads the peer plane's boot-id counters when scraped (registered whenever there is a peer plane, with or
    without discovery): requests refused here for naming another run's boot id, and our requests retried once
    with a peer's new one (docs/security.md, "Boot ids")."""

    def __init__(self, client: PeerClient) -> None:
        self.client = client

    def collect(self) -> Iterable[Metric]:
        stale = CounterMetricFamily("peerserve_peer_stale_boot", "Peer requests naming another run's boot id, by side",
                                    labels=["side"])  # fmt: skip
        stale.add_metric(["refused"], self.client.identity.stale_boot_refused)
        stale.add_metric(["retried"], self.client.boots.learnt)
        yield stale
