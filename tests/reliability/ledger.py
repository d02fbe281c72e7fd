"""The reliability suite's ledger: how many cases were tried and refused, how many jobs were lost, and
every secret the suite handed out, checked against everything the code under test said.

"Said" means: log records (formatted the way Powertools writes them to stdout, plus their extra
fields and tracebacks), captured stdout/stderr, response bodies and headers, failure reports, and
whatever the functions left where people read it (app table, job queue, dead-letter queue and its
reasons). A secret is a JWT's payload or signature segment (the header segment is shared by many
tokens), or a whole opaque token. A leak is any run of ``2 * CHUNK - 1`` characters of a secret.

Account ids are a second kind of secret, with a different rule: an account id is personal data the
backend legitimately stores (a user's token is keyed by it, a digest names its owner, a job request
carries ``requestedBy``), so it cannot be banned from everything the way a token is. What must never
happen is that one person's id is said to someone else or leaves the job that handled it. A test
registers the ids it creates with ``account()`` ("another user's": nobody calling in the suite is
that account unless the call says so), and ``leaks()`` then looks for them, whole or as their part
after the ``557058:``/``qm:`` prefix, plain or percent-encoded, only where they must not appear:

- log records, captured output and failure reports: everything (a log is read by operators and kept
  for 30 days; an id in one is a leak found before);
- response bodies and headers: everything, except the id of the account the response went to (its
  FIT's ``principal``; ``seen(..., viewer=...)``): a user's own id in their own answer is fine;
- the app table: only ``DEAD#`` items (their reason is shown on the status page to every user of the
  site); every other item is storage the personal data report covers;
- the dead-letter queue: only the message attributes (the reason); the body is the job request as it
  was sent, ``requestedBy`` included, which is storage like the job queue's (not checked).

Outputs recorded before the first account was registered are not searched for account ids (nothing
could have said an id before a test made it up), which keeps the cost of the scan to the tests that
use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

CHUNK = 20  # secrets are indexed in CHUNK-sized pieces: any 39-character piece of one is found
_RUN = re.compile(rf"[A-Za-z0-9_-]{{{CHUNK},}}")
SECRET_HEADERS = ("authorization", "x-forge-oauth-system", "x-forge-oauth-user")
# A candidate account id: a run of the characters ids are made of (``%`` for a percent-encoded ``:``).
_ID_RUN = re.compile(r"[A-Za-z0-9:_%-]{6,}")
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9:_-]{6,128}")
MIN_TAIL = 8  # an id's part after its prefix is searched for on its own when at least this long


def _jwt_payload(token: str) -> dict[str, object]:
    try:
        segment = token.split(".")[1]
        payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (IndexError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def caller_of(headers: Mapping[str, str]) -> str | None:
    """The account a request's FIT names as its ``principal`` (read, not verified): who sees the answer."""
    for name, value in headers.items():
        if name.lower() == "authorization" and isinstance(value, str):
            principal = _jwt_payload(value.removeprefix("Bearer ").strip()).get("principal")
            return principal if isinstance(principal, str) else None
    return None


def _account_exposed(kind: str, text: str) -> str | None:
    """The part of an output where another user's account id must not appear (None: nowhere in it)."""
    if kind == "app table":
        try:
            item = json.loads(text)
        except ValueError:
            return text
        return text if str(item.get("sk", {}).get("S", "")).startswith("DEAD#") else None
    if kind == "JobsDeadLetterQueue":
        try:
            return json.dumps(json.loads(text).get("attributes"), default=str)
        except (ValueError, AttributeError):
            return text
    if kind == "JobsQueue":
        return None  # job requests carry requestedBy: storage, not something said
    return text


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


def account_label(account_id: str) -> str:
    """How a leaked account id is reported: a digest (its first characters are the shared prefix)."""
    return "account#" + hashlib.blake2b(account_id.encode(), digest_size=4).hexdigest()


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
    # Other users' account ids, and where they must not appear: (index in _outputs, who saw it, the
    # part of it to search when not all of it).
    accounts: set[str] = field(default_factory=set, repr=False)
    _exposures: list[tuple[int, str | None, str | None]] = field(default_factory=list, repr=False)

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

    def account(self, account_id: str) -> str:
        """Remember an account id a test made up: it must never be said to anyone else (see above)."""
        if not _ACCOUNT_ID.fullmatch(account_id):
            raise ValueError("not an account id the scan can find")
        self.accounts.add(account_id)
        return account_id

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Register the FIT and tokens in a set of request headers; returns them (as a new dict)."""
        for name, value in headers.items():
            if name.lower() in SECRET_HEADERS and isinstance(value, str):
                self.secret(value)
        return dict(headers)

    # -- output
    def seen(self, text: object, kind: str = "output", *, viewer: str | None = None) -> None:
        """Something the code under test said; ``viewer``: the account a response went to, if any."""
        if text is None:
            return
        if not isinstance(text, str):
            text = repr(text)
        if not text:
            return
        digest = hashlib.blake2b(f"{kind}\0{viewer}\0{text}".encode("utf-8", "surrogatepass"), digest_size=16)
        if digest.digest() in self._digests:
            return
        self._digests.add(digest.digest())
        self._outputs.append((f"{self.where} ({kind})", text))
        self.output_chars += len(text)
        if self.accounts:
            exposed = _account_exposed(kind, text)
            if exposed is not None:
                self._exposures.append((len(self._outputs) - 1, viewer, None if exposed is text else exposed))

    def _account_mentions(self, text: str, tails: Mapping[str, str]) -> Iterator[str]:
        """Registered account ids ``text`` names: whole (also right before a ``:``), or the part after
        their prefix (``tails``), plain or with the ``:`` percent-encoded."""
        for run in _ID_RUN.finditer(text):
            parts = re.sub("%3[Aa]", ":", run.group()).split(":")
            for i in range(len(parts)):
                for j in range(i + 1, len(parts) + 1):
                    candidate = ":".join(parts[i:j])
                    if candidate in self.accounts:
                        yield candidate
                    elif candidate in tails:
                        yield tails[candidate]

    def leaks(self) -> list[Leak]:
        return sorted([*self._token_leaks(), *self._account_leaks()], key=lambda leak: (leak.where, leak.secret_prefix))

    def _token_leaks(self) -> list[Leak]:
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
                    hit = index.get(piece[j : j + CHUNK])
                    if hit is not None:
                        found.setdefault(hit, where)
                        break
            for secret in short:
                if secret in text:
                    found.setdefault(secret, where)
        return [Leak(secret[:6] + "...", where) for secret, where in found.items()]

    def mark(self) -> int:
        """Where output stands now: for ``outputs_since`` and ``account_leaks(since=...)``."""
        return len(self._outputs)

    def outputs_since(self, mark: int) -> list[tuple[str, str]]:
        """``(where (kind), text)`` of everything seen since ``mark``."""
        return list(self._outputs[mark:])

    def account_leaks(self, since: int = 0) -> list[Leak]:
        """Other users' account ids where they must not be, in what was seen since ``since``."""
        return self._account_leaks(since)

    def _account_leaks(self, since: int = 0) -> list[Leak]:
        found: dict[str, str] = {}
        tails = {a.split(":", 1)[1]: a for a in self.accounts if len(a.partition(":")[2]) >= MIN_TAIL}
        for position, viewer, part in self._exposures:
            if position < since:
                continue
            where, text = self._outputs[position]
            for account in self._account_mentions(text if part is None else part, tails):
                if account != viewer:
                    found.setdefault(account, where)
        return [Leak(account_label(account), where) for account, where in found.items()]

    def summary(self) -> str:
        return (
            f"reliability: {self.tried} cases tried, {self.rejected} rejected as expected, {self.lost_jobs} lost jobs"
        )


LEDGER = Ledger()
