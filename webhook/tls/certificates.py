"""The webhook's own CA and serving certificate: the only module that imports `cryptography`.

Everything here is a pure function of its arguments (the current time included), so
the renewal rules are unit-tested without a cluster; `webhook.tls.secret` does the I/O.
Certificates and keys cross this module's boundary as PEM bytes only.

Choices, and why:

- **EC P-256 keys.** Go's TLS stack (the kube-apiserver is the only client) and
  Python's `ssl` both support them; a key is generated in about a millisecond where
  RSA-2048 takes tens to hundreds (replicas generate keys at start-up, often on
  throttled CPUs); signatures and handshakes are cheaper; and the strength is that of
  RSA-3072.
- **CA valid 10 years, serving certificate 1 year, renewed 30 days before expiry** (the
  kubeadm convention). The CA is the part whose rotation needs an overlap in the
  apiserver's `caBundle`; the serving certificate is replaced in place, and renewing
  a month early leaves weeks to notice a replica that cannot write its Secret.
- **The CA is rotated while it can still sign a full-length serving certificate**
  (remaining life below serving validity + renewal margin), so a serving certificate
  never outlives its CA. The old CA stays in the bundle until it expires or a grace
  period after its successor was created has passed, whichever comes first: long
  enough for every replica to load the new serving certificate.
- Certificates are backdated an hour, so that nodes whose clocks lag the one that
  issued them still accept them.
"""

import dataclasses
import datetime
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

from cryptography import exceptions, x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook import errors

CA_VALIDITY: Final = datetime.timedelta(days=3650)
SERVING_VALIDITY: Final = datetime.timedelta(days=365)
RENEW_BEFORE: Final = datetime.timedelta(days=30)
RETIRED_CA_GRACE: Final = datetime.timedelta(days=1)
BACKDATE: Final = datetime.timedelta(hours=1)
CLUSTER_DOMAIN: Final = "cluster.local"


@dataclasses.dataclass(frozen=True)
class Validity:
    """How long certificates live and when they are replaced."""

    ca: datetime.timedelta = CA_VALIDITY
    serving: datetime.timedelta = SERVING_VALIDITY
    renew_before: datetime.timedelta = RENEW_BEFORE
    retired_ca_grace: datetime.timedelta = RETIRED_CA_GRACE

    def __post_init__(self) -> None:
        if not datetime.timedelta(0) < self.renew_before < self.serving:
            raise ValueError("renew_before must be positive and shorter than the serving validity")
        if self.ca <= self.serving + self.renew_before:
            raise ValueError("the CA must outlive a serving certificate plus its renewal margin")


DEFAULT_VALIDITY: Final = Validity()


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


@dataclasses.dataclass(frozen=True)
class Material:
    """Everything the self-managed TLS Secret holds; empty bytes stand for a missing entry.

    `bundle_pem` is what the apiserver must trust (`caBundle`): the signing CA first,
    then CAs being retired.
    """

    ca: KeyPair
    serving: KeyPair
    bundle_pem: bytes

    @classmethod
    def empty(cls) -> "Material":
        return cls(KeyPair(b"", b""), KeyPair(b"", b""), b"")


@dataclasses.dataclass(frozen=True)
class Renewal:
    """The material to store, and why it differs from what was stored (empty: it does not)."""

    material: Material
    reasons: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.reasons)


@dataclasses.dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    serial_number: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    dns_names: tuple[str, ...]
    is_ca: bool
    fingerprint: str


# --------------------------------------------------------------------------
# Creating
# --------------------------------------------------------------------------


def service_dns_names(service: str, namespace: str) -> tuple[str, ...]:
    """The names the apiserver may use for a webhook Service (it calls `<svc>.<ns>.svc`)."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}",
    )


def create_ca(
    common_name: str, now: datetime.datetime, validity: datetime.timedelta = CA_VALIDITY
) -> KeyPair:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now) - BACKDATE)
        .not_valid_after(_utc(now) + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


def create_serving_cert(
    ca: KeyPair,
    dns_names: Sequence[str],
    now: datetime.datetime,
    validity: datetime.timedelta = SERVING_VALIDITY,
) -> KeyPair:
    """A TLS server certificate for `dns_names`, signed by `ca`, never outliving it.

    A name that is an IP address literal becomes an IP SAN: a client dialing an IP
    (an apiserver calling a webhook URL such as https://127.0.0.1:8443) checks those."""
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    ca_cert = _load_cert(ca.cert_pem)
    ca_key = _load_ec_key(ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(_utc(now) + validity, ca_cert.not_valid_after_utc)
    # The most specific name the apiserver dials; Go ignores the CN and reads the SANs.
    common_name = max(dns_names, key=len)[:64]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now) - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in dns_names]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(_cert_pem(cert), _key_pem(key))


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def join_bundle(cert_pems: Iterable[bytes]) -> bytes:
    """Concatenate PEM certificates, each ending in exactly one newline."""
    return b"".join(pem.strip() + b"\n" for pem in cert_pems)


def describe(cert_pem: bytes) -> CertificateInfo:
    """What a certificate says about itself; raises `errors.InvalidCertificate`."""
    cert = _load_cert(cert_pem)
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial_number=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        dns_names=_dns_names(cert),
        is_ca=_is_ca(cert),
        fingerprint=_fingerprint(cert),
    )


def expires_at(cert_pem: bytes) -> datetime.datetime:
    """When the (first) certificate in `cert_pem` stops being valid, in UTC."""
    return _load_cert(cert_pem).not_valid_after_utc


def is_issued_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `ca_pem`'s key signed `cert_pem` (names and signature; not validity)."""
    try:
        _load_cert(cert_pem).verify_directly_issued_by(_load_cert(ca_pem))
    except (ValueError, TypeError, exceptions.InvalidSignature, errors.InvalidCertificate):
        return False
    return True


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether `key_pem` is the private key of `cert_pem`."""
    try:
        cert_public = _load_cert(cert_pem).public_key()
        key_public = _load_ec_key(key_pem).public_key()
    except errors.InvalidCertificate:
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert_public.public_bytes(*spki) == key_public.public_bytes(*spki)


# --------------------------------------------------------------------------
# Deciding
# --------------------------------------------------------------------------


def build_bundle(
    signing_ca_pem: bytes,
    previous_pems: Iterable[bytes],
    now: datetime.datetime,
    grace: datetime.timedelta = RETIRED_CA_GRACE,
) -> bytes:
    """The `caBundle`: the signing CA, then every other CA still worth trusting.

    A previous CA is kept while it is unexpired and the signing CA is younger than
    `grace`: replicas still serving a certificate from the old CA keep working until
    they load the new one. Duplicates and non-CA certificates are dropped.
    """
    signing = _load_cert(signing_ca_pem)
    keep_until = signing.not_valid_before_utc + BACKDATE + grace
    seen = {_fingerprint(signing)}
    kept = [signing]
    for pem in previous_pems:
        for cert in _certs_or_none(pem):
            fingerprint = _fingerprint(cert)
            if fingerprint in seen or not _is_ca(cert):
                continue
            seen.add(fingerprint)
            if _utc(now) < min(cert.not_valid_after_utc, keep_until):
                kept.append(cert)
    return join_bundle(_cert_pem(cert) for cert in kept)


def renew(
    current: Material,
    dns_names: Sequence[str],
    now: datetime.datetime,
    validity: Validity | None = None,
    also_trusted: Iterable[bytes] = (),
) -> Renewal:
    """Decide what the TLS Secret must hold at `now`, reusing whatever is still good.

    `current` is what the Secret holds (anything may be missing or garbage);
    `also_trusted` are bundles the apiserver trusts right now (the webhook
    configurations' `caBundle`), kept during a rotation like the Secret's own.
    """
    validity = validity or DEFAULT_VALIDITY
    reasons: list[str] = []
    ca = current.ca
    ca_problem = _ca_problem(ca, now, validity.serving + validity.renew_before)
    if ca_problem:
        reasons.append(ca_problem)
        ca = create_ca(_ca_common_name(dns_names, now), now, validity.ca)

    serving = current.serving
    serving_problem = _serving_problem(serving, ca, dns_names, now, validity.renew_before)
    if serving_problem:
        reasons.append(serving_problem)
        serving = create_serving_cert(ca, dns_names, now, validity.serving)

    previous = [current.ca.cert_pem, current.bundle_pem, *also_trusted]
    bundle = build_bundle(ca.cert_pem, previous, now, validity.retired_ca_grace)
    if bundle != current.bundle_pem:
        reasons.append("the CA bundle changed")
    return Renewal(Material(ca=ca, serving=serving, bundle_pem=bundle), tuple(reasons))


def _ca_problem(ca: KeyPair, now: datetime.datetime, must_last: datetime.timedelta) -> str:
    if not ca.cert_pem or not ca.key_pem:
        return "no CA yet"
    try:
        cert = _load_cert(ca.cert_pem)
    except errors.InvalidCertificate:
        return "the CA certificate does not parse"
    if not _is_ca(cert):
        return "the CA certificate is not a CA"
    if not key_matches(ca.cert_pem, ca.key_pem):
        return "the CA key does not match its certificate"
    if _utc(now) + must_last >= cert.not_valid_after_utc:
        return f"the CA expires at {cert.not_valid_after_utc.isoformat()}"
    return ""


def _serving_problem(
    serving: KeyPair,
    ca: KeyPair,
    dns_names: Sequence[str],
    now: datetime.datetime,
    renew_before: datetime.timedelta,
) -> str:
    if not serving.cert_pem or not serving.key_pem:
        return "no serving certificate yet"
    try:
        cert = _load_cert(serving.cert_pem)
    except errors.InvalidCertificate:
        return "the serving certificate does not parse"
    if not key_matches(serving.cert_pem, serving.key_pem):
        return "the serving key does not match its certificate"
    if not is_issued_by(serving.cert_pem, ca.cert_pem):
        return "the serving certificate is not signed by the current CA"
    if set(_dns_names(cert)) != set(dns_names):
        return "the serving certificate is for other DNS names"
    if _utc(now) >= cert.not_valid_after_utc - renew_before:
        return f"the serving certificate expires at {cert.not_valid_after_utc.isoformat()}"
    return ""


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as error:
        raise errors.InvalidCertificate(f"not a PEM certificate: {error}") from None


def _certs_or_none(pem: bytes) -> list[x509.Certificate]:
    if not pem.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError:
        return []


def _load_ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as error:
        raise errors.InvalidCertificate(f"not a PEM private key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise errors.InvalidCertificate("not an EC private key")
    return key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(sans.get_values_for_type(x509.DNSName))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _ca_common_name(dns_names: Sequence[str], now: datetime.datetime) -> str:
    # A distinct name per CA keeps the certificates of a rotation apart in a bundle.
    stamp = _utc(now).strftime("%Y%m%dT%H%M%SZ")
    return f"{dns_names[0]} CA {stamp}"[:64] if dns_names else f"digestguard CA {stamp}"


def _utc(moment: datetime.datetime) -> datetime.datetime:
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(datetime.UTC)
