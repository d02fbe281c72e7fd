"""The reliability suite's ledger: how many cases were tried and refused, how many jobs were lost, and
every secret the suite handed out, checked against everything the code under test said.

"Said" means: log records (formatted the way Powertools writes them to stdout, plus their extra
fields and tracebacks), captured stdout/stderr, response bodies and headers, failure reports, and
whatever the functions left where people read it (app table, job queue, dead-letter queue and its
reasons). A secret is a JWT's payload or signature segment (the header segment is shared by many
tokens), or a whole opaque token. A leak is any run of ``2 * CHUNK - 1`` characters of a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

CHUNK = 20  # secrets are indexed in CHUNK-sized pieces: any 39-character piece of one is found
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{CHUNK},}}")
SECRET_HEADERS = ("authorization", "x-forge-oauth-system", "x-forge-oauth-user")


def _is_jose_header(segment: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:
        return False
    return isinstance(header, dict) and "alg" in header


@dataclass(frozen=True)
class Leak:
    secret_prefix: str  # a few characters, enough to find it again, not enough to be the secret
    where: str


@dataclass
class Ledger:
    tried: int = 0
    rejected: int = 0
    jobs: int = 0
    lost_jobs: int = 0
    # Never in a repr: a failure report showing the ledger would itself be a leak.
    secrets: set[str] = field(default_factory=set, repr=False)
    where: str = "session"  # the test currently running: leaks are reported with it
    _outputs: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _digests: set[bytes] = field(default_factory=set, repr=False)
    output_chars: int = 0

    # -- counting
    def refused(self, count: int = 1) -> None:
        """``count`` cases were tried and refused as expected."""
        self.tried += count
        self.rejected += count

    # -- secrets
    def secret(self, value: str) -> str:
        """Remember a FIT or token (or an Authorization value): no distinctive part may ever be seen."""
        value = value.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        pieces = value.split(".")
        if len(pieces) > 1 and _is_jose_header(pieces[0]):
            pieces = pieces[1:]  # a JWT (even a malformed one): its header segment is shared, not secret
        for piece in pieces:
            # Long and varied enough to be a secret: "AAAA..." padding would match innocent output.
            if len(piece) >= 16 and len(set(piece)) >= 10:
                self.secrets.add(piece)
        return value

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Register the FIT and tokens in a set of request headers; returns them (as a new dict)."""
        for name, value in headers.items():
            if name.lower() in SECRET_HEADERS and isinstance(value, str):
                self.secret(value)
        return dict(headers)

    # -- output
    def seen(self, text: object, kind: str = "output") -> None:
        if text is None:
            return
        if not isinstance(text, str):
            text = repr(text)
        if not text:
            return
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if digest in self._digests:
            return
        self._digests.add(digest)
        self._outputs.append((f"{self.where} ({kind})", text))
        self.output_chars += len(text)

    def leaks(self) -> list[Leak]:
        index: dict[str, str] = {}
        short: list[str] = []
        for secret in self.secrets:
            if len(secret) < 2 * CHUNK - 1:
                short.append(secret)
            for i in range(0, len(secret) - CHUNK + 1, CHUNK):
                index.setdefault(secret[i : i + CHUNK], secret)
        found: dict[str, str] = {}
        for where, text in self._outputs:
            for run in _RUN.finditer(text):
                piece = run.group()
                for j in range(len(piece) - CHUNK + 1):
                    secret = index.get(piece[j : j + CHUNK])
                    if secret is not None:
                        found.setdefault(secret, where)
                        break
            for secret in short:
                if secret in text:
                    found.setdefault(secret, where)
        return [Leak(secret[:6] + "...", where) for secret, where in sorted(found.items(), key=lambda i: i[1])]

    def summary(self) -> str:
        return (
            f"reliability: {self.tried} cases tried, {self.rejected} rejected as expected, {self.lost_jobs} lost jobs"
        )


LEDGER = Ledger()
