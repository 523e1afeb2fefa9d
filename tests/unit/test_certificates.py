"""The webhook's own CA and serving certificates: creation, renewal and CA rotation."""

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import bundles
from webhook import errors
from webhook.tls import certificates

NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
NAMES = certificates.service_dns_names("digestguard", "digestguard")


def real_now() -> datetime.datetime:
    # TLS handshakes check validity against the wall clock.
    return datetime.datetime.now(datetime.UTC)


def fresh(now: datetime.datetime = NOW) -> certificates.Material:
    return certificates.renew(certificates.Material.empty(), NAMES, now).material


def handshake(tmp_path: Path, serving: certificates.KeyPair, bundle: bytes, hostname: str) -> None:
    """A TLS handshake over memory BIOs: a client trusting `bundle` dials `hostname`."""
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(serving.cert_pem)
    key_file.write_bytes(serving.key_pem)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cadata=bundle.decode())
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, endpoint in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    endpoint.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


# --------------------------------------------------------------------------
# Creating
# --------------------------------------------------------------------------


def test_service_dns_names_are_every_name_the_service_answers_to() -> None:
    assert certificates.service_dns_names("svc", "ns") == (
        "svc",
        "svc.ns",
        "svc.ns.svc",
        "svc.ns.svc.cluster.local",
    )


def test_ca_is_self_signed_and_may_sign_only_end_entity_certificates() -> None:
    ca = certificates.create_ca("test CA", NOW)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert certificates.is_issued_by(ca.cert_pem, ca.cert_pem)
    assert certificates.key_matches(ca.cert_pem, ca.key_pem)


def test_keys_are_ec_p256() -> None:
    ca = certificates.create_ca("test CA", NOW)
    serving = certificates.create_serving_cert(ca, NAMES, NOW)
    for pem in (ca.cert_pem, serving.cert_pem):
        key = x509.load_pem_x509_certificate(pem).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"


def test_default_validity_is_ten_years_for_the_ca_and_one_for_the_serving_certificate() -> None:
    material = fresh()
    ca = certificates.describe(material.ca.cert_pem)
    serving = certificates.describe(material.serving.cert_pem)
    assert ca.not_after == NOW + datetime.timedelta(days=3650)
    assert serving.not_after == NOW + datetime.timedelta(days=365)


def test_certificates_are_backdated_against_clock_skew() -> None:
    material = fresh()
    assert certificates.describe(material.ca.cert_pem).not_before == NOW - certificates.BACKDATE
    assert (
        certificates.describe(material.serving.cert_pem).not_before == NOW - certificates.BACKDATE
    )


def test_serving_certificate_names_every_service_dns_name_and_is_for_servers() -> None:
    material = fresh()
    info = certificates.describe(material.serving.cert_pem)
    assert info.dns_names == NAMES
    assert not info.is_ca
    assert info.issuer == certificates.describe(material.ca.cert_pem).subject
    cert = x509.load_pem_x509_certificate(material.serving.cert_pem)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]


def test_serving_certificate_is_signed_by_its_ca_and_no_other() -> None:
    material = fresh()
    other = certificates.create_ca("other CA", NOW)
    assert certificates.is_issued_by(material.serving.cert_pem, material.ca.cert_pem)
    assert not certificates.is_issued_by(material.serving.cert_pem, other.cert_pem)


def test_serving_certificate_never_outlives_its_ca() -> None:
    ca = certificates.create_ca("short CA", NOW, validity=10 * DAY)
    serving = certificates.create_serving_cert(ca, NAMES, NOW, validity=365 * DAY)
    assert certificates.expires_at(serving.cert_pem) == certificates.expires_at(ca.cert_pem)


def test_serving_certificate_needs_a_name() -> None:
    ca = certificates.create_ca("test CA", NOW)
    with pytest.raises(ValueError, match="DNS name"):
        certificates.create_serving_cert(ca, (), NOW)


def test_times_without_a_timezone_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        certificates.create_ca("test CA", datetime.datetime(2026, 1, 1))


def test_tls_client_trusting_the_bundle_accepts_the_service_name(tmp_path: Path) -> None:
    material = fresh(real_now())
    handshake(tmp_path, material.serving, material.bundle_pem, "digestguard.digestguard.svc")


def test_tls_client_refuses_a_name_the_certificate_does_not_carry(tmp_path: Path) -> None:
    material = fresh(real_now())
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        handshake(tmp_path, material.serving, material.bundle_pem, "elsewhere.digestguard.svc")


def test_tls_client_trusting_another_ca_refuses_the_certificate(tmp_path: Path) -> None:
    material = fresh(real_now())
    other = certificates.create_ca("other CA", real_now())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tmp_path, material.serving, other.cert_pem, "digestguard.digestguard.svc")


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def test_expires_at_is_the_not_after_time() -> None:
    ca = certificates.create_ca("test CA", NOW, validity=30 * DAY)
    assert certificates.expires_at(ca.cert_pem) == NOW + 30 * DAY


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        (datetime.timedelta(0), False),
        (334 * DAY, False),
        (335 * DAY - datetime.timedelta(seconds=1), False),
        (335 * DAY, True),
        (400 * DAY, True),
    ],
)
def test_renewal_is_due_30_days_before_expiry(age: datetime.timedelta, expected: bool) -> None:
    renewal = certificates.renew(fresh(), NAMES, NOW + age)
    renewed = any("serving certificate expires" in reason for reason in renewal.reasons)
    assert renewed is expected


def test_bundle_splits_into_its_certificates_and_joins_back() -> None:
    first = certificates.create_ca("first CA", NOW).cert_pem
    second = certificates.create_ca("second CA", NOW).cert_pem
    bundle = certificates.join_bundle([first, second])
    assert bundles.split(bundle) == (first, second)
    assert certificates.join_bundle(bundles.split(bundle)) == bundle


@pytest.mark.parametrize("garbage", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\n"])
def test_garbage_is_an_invalid_certificate(garbage: bytes) -> None:
    with pytest.raises(errors.InvalidCertificate):
        certificates.describe(garbage)
    assert not certificates.key_matches(garbage, garbage)
    assert not certificates.is_issued_by(garbage, garbage)


def test_key_of_another_certificate_does_not_match() -> None:
    first = certificates.create_ca("first CA", NOW)
    second = certificates.create_ca("second CA", NOW)
    assert not certificates.key_matches(first.cert_pem, second.key_pem)


# --------------------------------------------------------------------------
# Deciding what the Secret holds
# --------------------------------------------------------------------------


def test_renew_creates_a_ca_a_serving_certificate_and_a_bundle_from_nothing() -> None:
    renewal = certificates.renew(certificates.Material.empty(), NAMES, NOW)
    assert renewal.changed
    material = renewal.material
    assert certificates.is_issued_by(material.serving.cert_pem, material.ca.cert_pem)
    assert bundles.split(material.bundle_pem) == (material.ca.cert_pem,)


def test_renew_keeps_good_material_as_it_is() -> None:
    material = fresh()
    renewal = certificates.renew(material, NAMES, NOW + 100 * DAY)
    assert not renewal.changed
    assert renewal.material == material


def test_serving_certificate_near_expiry_is_replaced_under_the_same_ca() -> None:
    material = fresh()
    renewal = certificates.renew(material, NAMES, NOW + 340 * DAY)
    assert renewal.changed
    assert any("serving certificate expires" in reason for reason in renewal.reasons)
    assert renewal.material.ca == material.ca
    assert renewal.material.bundle_pem == material.bundle_pem
    assert renewal.material.serving != material.serving
    assert certificates.expires_at(renewal.material.serving.cert_pem) == NOW + 705 * DAY


def test_serving_certificate_is_reissued_when_the_service_name_changes() -> None:
    material = fresh()
    names = certificates.service_dns_names("renamed", "digestguard")
    renewal = certificates.renew(material, names, NOW)
    assert renewal.material.ca == material.ca
    assert certificates.describe(renewal.material.serving.cert_pem).dns_names == names


@pytest.mark.parametrize(
    "damage",
    ["serving key of another certificate", "garbage serving certificate", "no serving key"],
)
def test_damaged_serving_material_is_reissued_under_the_same_ca(damage: str) -> None:
    material = fresh()
    stranger = certificates.create_ca("stranger", NOW)
    serving = {
        "serving key of another certificate": certificates.KeyPair(
            material.serving.cert_pem, stranger.key_pem
        ),
        "garbage serving certificate": certificates.KeyPair(b"junk", material.serving.key_pem),
        "no serving key": certificates.KeyPair(material.serving.cert_pem, b""),
    }[damage]
    damaged = certificates.Material(material.ca, serving, material.bundle_pem)
    renewal = certificates.renew(damaged, NAMES, NOW)
    assert renewal.material.ca == material.ca
    assert certificates.key_matches(
        renewal.material.serving.cert_pem, renewal.material.serving.key_pem
    )


def test_damaged_ca_is_replaced_and_the_serving_certificate_reissued() -> None:
    material = fresh()
    stranger = certificates.create_ca("stranger", NOW)
    damaged = certificates.Material(
        certificates.KeyPair(material.ca.cert_pem, stranger.key_pem),
        material.serving,
        material.bundle_pem,
    )
    renewal = certificates.renew(damaged, NAMES, NOW)
    assert any("CA key does not match" in reason for reason in renewal.reasons)
    assert renewal.material.ca.cert_pem != material.ca.cert_pem
    assert certificates.is_issued_by(
        renewal.material.serving.cert_pem, renewal.material.ca.cert_pem
    )


def test_ca_is_rotated_while_it_can_still_sign_a_full_serving_certificate() -> None:
    validity = certificates.Validity(
        ca=10 * DAY, serving=4 * DAY, renew_before=DAY, retired_ca_grace=DAY
    )
    material = certificates.renew(certificates.Material.empty(), NAMES, NOW, validity).material
    # 5 days + 1 s left: a 4-day certificate plus a 1-day margin still fits.
    keep = certificates.renew(
        material, NAMES, NOW + 5 * DAY - datetime.timedelta(seconds=1), validity
    )
    assert keep.material.ca == material.ca
    rotated = certificates.renew(material, NAMES, NOW + 5 * DAY, validity)
    assert any("the CA expires" in reason for reason in rotated.reasons)
    assert rotated.material.ca != material.ca


def test_rotation_keeps_the_old_ca_in_the_bundle_after_the_new_one(tmp_path: Path) -> None:
    start = real_now()
    validity = certificates.Validity(
        ca=10 * DAY, serving=4 * DAY, renew_before=DAY, retired_ca_grace=DAY
    )
    # A CA created 9 days ago with 10-day validity: too short for another 4-day certificate.
    old_ca = certificates.create_ca("old CA", start - 9 * DAY, validity=10 * DAY)
    old_serving = certificates.create_serving_cert(old_ca, NAMES, start - DAY, validity.serving)
    short = certificates.Material(old_ca, old_serving, old_ca.cert_pem)
    rotated = certificates.renew(short, NAMES, start, validity).material
    bundle = bundles.split(rotated.bundle_pem)
    assert bundle == (rotated.ca.cert_pem, short.ca.cert_pem)
    assert certificates.is_issued_by(rotated.serving.cert_pem, rotated.ca.cert_pem)
    # A replica still serving the old CA's certificate is trusted during the overlap,
    # and so is one serving the new certificate.
    hostname = "digestguard.digestguard.svc"
    handshake(tmp_path, old_serving, rotated.bundle_pem, hostname)
    handshake(tmp_path, rotated.serving, rotated.bundle_pem, hostname)


def test_retired_ca_leaves_the_bundle_after_the_grace_period() -> None:
    old_ca = certificates.create_ca("old CA", NOW - 100 * DAY)
    new_ca = certificates.create_ca("new CA", NOW)
    during = certificates.build_bundle(
        new_ca.cert_pem, [old_ca.cert_pem], NOW + 23 * datetime.timedelta(hours=1)
    )
    after = certificates.build_bundle(new_ca.cert_pem, [old_ca.cert_pem], NOW + DAY)
    assert bundles.split(during) == (new_ca.cert_pem, old_ca.cert_pem)
    assert bundles.split(after) == (new_ca.cert_pem,)


def test_retired_ca_leaves_the_bundle_once_expired_even_within_the_grace_period() -> None:
    old_ca = certificates.create_ca("old CA", NOW - 10 * DAY, validity=10 * DAY)
    new_ca = certificates.create_ca("new CA", NOW)
    bundle = certificates.build_bundle(new_ca.cert_pem, [old_ca.cert_pem], NOW, grace=30 * DAY)
    assert bundles.split(bundle) == (new_ca.cert_pem,)


def test_trimming_the_bundle_is_a_change_to_store() -> None:
    validity = certificates.Validity(
        ca=10 * DAY, serving=4 * DAY, renew_before=DAY, retired_ca_grace=DAY
    )
    material = fresh()
    old_ca = certificates.create_ca("old CA", NOW - 5 * DAY)
    with_old = certificates.Material(
        material.ca,
        material.serving,
        certificates.join_bundle([material.ca.cert_pem, old_ca.cert_pem]),
    )
    renewal = certificates.renew(with_old, NAMES, NOW + 2 * DAY, validity)
    assert renewal.reasons == ("the CA bundle changed",)
    assert bundles.split(renewal.material.bundle_pem) == (material.ca.cert_pem,)


def test_bundle_keeps_a_ca_the_apiserver_trusts_while_a_new_ca_takes_over() -> None:
    # Switching from another TLS mode: replicas may still serve the previous CA's cert.
    previous = certificates.create_ca("cert-manager CA", NOW - 30 * DAY)
    renewal = certificates.renew(
        certificates.Material.empty(), NAMES, NOW, also_trusted=[previous.cert_pem]
    )
    assert bundles.split(renewal.material.bundle_pem) == (
        renewal.material.ca.cert_pem,
        previous.cert_pem,
    )


def test_bundle_drops_duplicates_end_entity_certificates_and_garbage() -> None:
    material = fresh()
    bundle = certificates.build_bundle(
        material.ca.cert_pem,
        [material.ca.cert_pem, material.serving.cert_pem, b"junk", b"", material.bundle_pem],
        NOW,
    )
    assert bundles.split(bundle) == (material.ca.cert_pem,)


@pytest.mark.parametrize(
    ("ca", "serving", "renew_before"),
    [
        (3650 * DAY, 365 * DAY, 365 * DAY),
        (3650 * DAY, 365 * DAY, datetime.timedelta(0)),
        (300 * DAY, 365 * DAY, 30 * DAY),
        (395 * DAY, 365 * DAY, 30 * DAY),
    ],
)
def test_validity_that_cannot_work_is_refused(
    ca: datetime.timedelta, serving: datetime.timedelta, renew_before: datetime.timedelta
) -> None:
    with pytest.raises(ValueError, match="must"):
        certificates.Validity(ca=ca, serving=serving, renew_before=renew_before)


def test_an_ip_address_name_becomes_an_ip_san() -> None:
    ca = certificates.create_ca("test CA", NOW)
    serving = certificates.create_serving_cert(ca, ["127.0.0.1", "localhost"], NOW)
    sans = (
        x509.load_pem_x509_certificate(serving.cert_pem)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
