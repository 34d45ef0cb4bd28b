"""Who is at the other end of a mutual-TLS peer connection: the node its certificate names, with its key.

Every peer connection is mutual TLS against the cluster CA (agent.peer_api's listener requires a client
certificate; agent.peer_client trusts only the CA), and the CA issues each node's certificate for the node's
own Ed25519 key with CN = node id (agent.identity), the key its card certifies and its pin holds. OpenSSL
has checked the chain and the handshake proved the key; ``peer_identity`` reads (node id, raw public key)
from the certificate once per connection. The pin is the caller's to check at every message (an operator
can re-pin an id while a connection lives). A direct exchange over such a connection needs no per-message
signature: docs/security.md ("Direct exchanges") gives the argument.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from peerserve import wire

log = logging.getLogger(__name__)

PEER_KEY = "peer_identity"  # where the listener puts a connection's (node id, key) in the ASGI scope's "state"

PeerIdentity = tuple[str, bytes]


def cert_identity(der: bytes | None) -> PeerIdentity | None:
    """(node id, raw Ed25519 public key) of a DER certificate; None for anything else (no cert, no node id)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        key = cert.public_key()
    except ValueError:
        return None
    node_id = str(names[0].value) if len(names) == 1 else ""
    if not isinstance(key, Ed25519PublicKey) or not wire.NODE_ID.fullmatch(node_id):
        return None
    return node_id, key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def peer_identity(transport: Any) -> PeerIdentity | None:
    """The identity a TLS transport (or stream writer) proved in its handshake; None without TLS or certificate."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, (ssl.SSLObject, ssl.SSLSocket)):
        return None
    try:
        return cert_identity(ssl_object.getpeercert(binary_form=True))
    except ValueError:  # the handshake is not done
        return None


def connection_state(transport: Any) -> dict[str, Any]:
    """What the peer listener adds to every request's scope["state"] on this connection (agent.peer_gate)."""
    found = peer_identity(transport)
    return {PEER_KEY: found} if found is not None else {}
