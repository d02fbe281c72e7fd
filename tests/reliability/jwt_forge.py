"""Hand-made JWTs: any header, any claims (pyjwt refuses to encode many of the malformed ones)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64url(value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode())


def signing_input(header: Any, claims: Any) -> str:
    return f"{segment(header)}.{segment(claims)}"


def rs256(header: Any, claims: Any, key: rsa.RSAPrivateKey, *, digest: hashes.HashAlgorithm | None = None) -> str:
    message = signing_input(header, claims)
    signature = key.sign(message.encode(), padding.PKCS1v15(), digest or hashes.SHA256())
    return f"{message}.{b64url(signature)}"


def ps256(header: Any, claims: Any, key: rsa.RSAPrivateKey) -> str:
    message = signing_input(header, claims)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    return f"{message}.{b64url(key.sign(message.encode(), pss, hashes.SHA256()))}"


def es256(header: Any, claims: Any, key: ec.EllipticCurvePrivateKey) -> str:
    message = signing_input(header, claims)
    r, s = decode_dss_signature(key.sign(message.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{message}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def hs256(header: Any, claims: Any, secret: bytes) -> str:
    message = signing_input(header, claims)
    return f"{message}.{b64url(hmac.new(secret, message.encode(), hashlib.sha256).digest())}"


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
