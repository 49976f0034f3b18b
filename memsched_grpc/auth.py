"""Token authentication and per-user authorisation, shared by the gRPC API and the web dashboard.

A token names the users it may act for. A caller for user A can neither submit for, nor read, watch or
inspect user B's cubes: the servicer asks ``Principal.check`` before touching a user's data.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from memsched_grpc.config import AuthConfig
from memsched_grpc.errors import MemschedError

log = logging.getLogger(__name__)
ALL_USERS = "*"


class Unauthenticated(MemschedError):
    """No token, or one the server does not know."""


class PermissionDenied(MemschedError):
    """The caller's token does not cover this user."""


@dataclass(frozen=True)
class Principal:
    name: str
    users: frozenset[str]

    @property
    def all_users(self) -> bool:
        return ALL_USERS in self.users

    def may_act_for(self, user_id: str) -> bool:
        return self.all_users or user_id in self.users

    def check(self, user_id: str) -> None:
        if not self.may_act_for(user_id):
            raise PermissionDenied(f"token {self.name!r} may not act for user_id {user_id!r}")


ANONYMOUS = Principal("anonymous", frozenset({ALL_USERS}))


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self._tokens = [
            (t.token.get_secret_value().encode(), Principal(t.name or f"token-{i}", frozenset(t.users)))
            for i, t in enumerate(config.tokens)
        ]

    def authenticate_token(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise Unauthenticated("missing token: send metadata 'authorization: Bearer <token>'")
        given = token.encode()
        for secret, principal in self._tokens:
            if hmac.compare_digest(secret, given):  # constant time: no token guessing by timing
                return principal
        raise Unauthenticated("unknown token")

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal:
        """Find the bearer token in call metadata."""
        token = None
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                scheme, _, rest = value.partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" else None
        return self.authenticate_token(token)
