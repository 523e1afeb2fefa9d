"""Reading a PEM CA bundle back into its certificates, to check what the webhook wrote."""

from cryptography import x509
from cryptography.hazmat.primitives import serialization


def split(bundle_pem: bytes) -> tuple[bytes, ...]:
    """Each certificate of a PEM bundle, re-encoded as PEM, in bundle order."""
    certs = x509.load_pem_x509_certificates(bundle_pem)
    return tuple(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)
