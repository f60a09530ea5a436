"""Desk accounts: argon2 hashes in `desk_users`, agents seeded from their SIP secret, login rate limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crm_bridge.models import DeskUser
from desk.config import DeskConfig

_hasher = PasswordHasher()
MIN_PASSWORD = 8
# verifying against this when the user does not exist costs the same time: no user enumeration by timing
_DUMMY_HASH = _hasher.hash("not-a-real-password")


@dataclass(frozen=True, slots=True)
class SignedIn:
    username: str
    role: str  # agent | supervisor
    agent_number: str | None


class PasswordError(ValueError):
    pass


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"at least {MIN_PASSWORD} characters")
    if len(password) > 256:
        raise PasswordError("at most 256 characters")
    return password


def set_password(engine: Engine, username: str, password: str, *, role: str, agent_number: str | None = None) -> bool:
    """Create or update an account; True when it was created."""
    check_password(password)
    with Session(engine) as s, s.begin():
        user = s.scalars(select(DeskUser).where(DeskUser.username == username)).first()
        created = user is None
        if user is None:
            user = DeskUser(username=username, role=role, agent_number=agent_number, created_at=datetime.now(UTC))
            s.add(user)
        elif user.role != role:
            raise PasswordError(f"{username} is a {user.role} account")
        user.password_hash = _hasher.hash(password)
    return created


def account_exists(engine: Engine, username: str) -> bool:
    with Session(engine) as s:
        return s.scalar(select(DeskUser.id).where(DeskUser.username == username)) is not None


def seed_agents(engine: Engine, config: DeskConfig) -> list[str]:
    """Give each configured agent without a desk account one whose password is their SIP secret (first start)."""
    created = []
    with Session(engine) as s, s.begin():
        existing = set(s.scalars(select(DeskUser.username)))
        for agent in config.agents:
            if agent.number not in existing and len(agent.secret) >= MIN_PASSWORD:
                s.add(
                    DeskUser(
                        username=agent.number,
                        role="agent",
                        agent_number=agent.number,
                        password_hash=_hasher.hash(agent.secret),
                        created_at=datetime.now(UTC),
                    )
                )
                created.append(agent.number)
    return created


def authenticate(engine: Engine, config: DeskConfig, username: str, password: str) -> SignedIn | None:
    with Session(engine) as s:
        user = s.scalars(select(DeskUser).where(DeskUser.username == username)).first()
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None:
        return None
    if user.role == "agent" and (user.agent_number is None or config.agent(user.agent_number) is None):
        return None  # the seat was removed from sip.conf
    if user.role == "supervisor" and config.supervisors and user.username not in config.supervisors:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        with Session(engine) as s, s.begin():
            s.get_one(DeskUser, user.id).password_hash = _hasher.hash(password)
    return SignedIn(user.username, user.role, user.agent_number)


class LoginLimiter:
    """At most N login attempts a minute per account, and 4 N per client address (moving windows).

    The address gets more: a room of agents may share one address behind NAT.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_user = RateLimitItemPerMinute(per_minute)
        self.per_address = RateLimitItemPerMinute(4 * per_minute)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def allow(self, address: str, username: str) -> bool:
        by_address = self.limiter.hit(self.per_address, "desk-login-address", address)
        by_user = self.limiter.hit(self.per_user, "desk-login-user", username[:64])
        return by_address and by_user
