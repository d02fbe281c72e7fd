"""A job's hold on a token: checked before every Confluence request (token rule 4).

The job starts with a token valid for at least ``TOKEN_MIN_VALIDITY_S``. Before each request the
lease checks the token still has ``request_margin_s`` left; if not it looks for a newer one in the
store, and if there is none the job is deferred (``TokenUnavailable``), never sent with a token
about to expire.

A lease remembers every token it handed out (by digest), so that when a server rejects one
(``TokenRejected.token_sha256``) the worker can tell which lease it came from and invalidate exactly
that token under that lease's key. ``OfflineTokenLease`` (``tokens/offline.py``) is the same contract
for a user's offline token, which it can mint instead of waiting for Forge.
"""

from __future__ import annotations

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.storage.interfaces import Tokens
from forge_remote.storage.table_keys import APP_TOKEN_SK
from forge_remote.tokens.store import StoredToken, token_sha256

REQUEST_MARGIN_S = 60.0  # a request plus its retries must finish before the token expires


class TokenLease:
    def __init__(
        self,
        store: Tokens,
        installation_id: str,
        min_validity_s: float,
        *,
        request_margin_s: float = REQUEST_MARGIN_S,
        sk: str = APP_TOKEN_SK,
    ) -> None:
        self._store = store
        self.installation_id = installation_id
        self.sk = sk  # the tokens-table key this lease's tokens live under
        self._min_validity_s = min_validity_s
        self._margin_s = request_margin_s
        self._current: StoredToken | None = None
        self._issued: dict[str, StoredToken] = {}  # digest -> token this lease handed out

    @property
    def current(self) -> StoredToken | None:
        return self._current

    def _fetch(self, min_validity_s: float) -> StoredToken:
        """A token valid at least ``min_validity_s`` (raises ``TokenUnavailable``): the store's."""
        return self._store.get_valid(self.installation_id, min_validity_s, sk=self.sk)

    def _hold(self, stored: StoredToken) -> StoredToken:
        self._current = stored
        self._issued[token_sha256(stored.token)] = stored
        return stored

    def acquire(self) -> StoredToken:
        """A token valid for the job's minimum (raises ``TokenUnavailable``)."""
        return self._hold(self._fetch(self._min_validity_s))

    def token(self) -> str:
        """The bearer for the next request: re-checked now, refreshed if needed."""
        current = self._current
        if current is None or current.valid_for(clock.now()) < self._margin_s:
            try:
                current = self._hold(self._fetch(self._margin_s))
            except TokenUnavailable:
                self._current = None
                raise
        return current.token

    def issued(self, digest: str | None) -> StoredToken | None:
        """The token with this digest if this lease handed it out, else None."""
        return self._issued.get(digest) if digest else None

    def replacement_available(self) -> bool:
        """After this lease's token was invalidated: is another one valid for the job's minimum?
        For the app token only Forge can bring one, so it must already be in the store."""
        try:
            self._store.get_valid(self.installation_id, self._min_validity_s, sk=self.sk)
        except TokenUnavailable:
            return False
        return True  # the rejected token was deleted, so whatever is stored now is another one
