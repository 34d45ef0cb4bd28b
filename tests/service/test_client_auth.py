"""Optional client protection (agent/client_auth.py): a client token and an HTTPS listener, and the client library."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import Client
from tests.service.conftest import free_port

CLIENT_TOKEN = "phones-need-this-0123"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """An operator's certificate for 127.0.0.1 (self-signed: the test trusts it explicitly)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_file, key_file


def test_client_token_and_https_listener(agents: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    https_port = free_port()
    a = agents("a", "--no-discovery", "--client-token", CLIENT_TOKEN, "--https-port", str(https_port),
               "--tls-cert", str(cert), "--tls-key", str(key))  # fmt: skip
    auth = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    assert a.get("/health").status_code == 200  # liveness stays open
    r = a.get("/services/half_plus_two")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert a.get("/cluster", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert a.get("/services/half_plus_two", headers=auth).status_code == 200
    https = f"https://127.0.0.1:{https_port}"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as tls:
        assert tls.get(https + "/cluster").status_code == 401
        assert tls.get(https + "/cluster", headers=auth).json()["node_id"] == "a"
    monkeypatch.setenv("PEERSERVE_CLIENT_TOKEN", CLIENT_TOKEN)
    operator_ca = httpx.HTTPTransport(verify=ssl.create_default_context(cafile=str(cert)))
    with Client(agents=[https], transport=operator_ca) as c:
        assert c.predict("half_plus_two", instances=[1.0, 2.0]) == {"predictions": [2.5, 3.0]}
    assert CLIENT_TOKEN not in a.log.read_text()


def test_the_client_api_is_open_by_default(agents: Any) -> None:
    a = agents("a", "--no-discovery")
    assert a.get("/services/half_plus_two").status_code == 200
    assert a.get("/cluster").json()["peer_port"] == a.peer_port
