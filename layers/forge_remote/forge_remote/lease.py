"""A job's hold on a token: checked before every Confluence request (token rule 4).

The job starts with a token valid for at least ``TOKEN_MIN_VALIDITY_S``. Before each request the
lease checks the token still has ``request_margin_s`` left; if not it looks for a newer one in the
store, and if there is none the job is deferred (``TokenUnavailable``), never sent with a token
about to expire.
"""

from __future__ import annotations

from forge_remote import clock
from forge_remote.errors import TokenUnavailable
from forge_remote.tokens import StoredToken, TokenStore

REQUEST_MARGIN_S = 60.0  # a request plus its retries must finish before the token expires


class TokenLease:
    def __init__(
        self,
        store: TokenStore,
        installation_id: str,
        min_validity_s: float,
        *,
        request_margin_s: float = REQUEST_MARGIN_S,
    ) -> None:
        self._store = store
        self.installation_id = installation_id
        self._min_validity_s = min_validity_s
        self._margin_s = request_margin_s
        self._current: StoredToken | None = None

    @property
    def current(self) -> StoredToken | None:
        return self._current

    def acquire(self) -> StoredToken:
        """A token valid for the job's minimum, from the store (raises ``TokenUnavailable``)."""
        self._current = self._store.get_valid(self.installation_id, self._min_validity_s)
        return self._current

    def token(self) -> str:
        """The bearer for the next request: re-checked now, refreshed from the store if needed."""
        if self._current is None or self._current.valid_for(clock.now()) < self._margin_s:
            try:
                self._current = self._store.get_valid(self.installation_id, self._margin_s)
            except TokenUnavailable:
                self._current = None
                raise
        return self._current.token
