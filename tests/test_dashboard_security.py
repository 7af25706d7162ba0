"""Session and login-limit bookkeeping, on an explicit clock."""

from __future__ import annotations

from dashboards.security import LoginLimiter, Sessions, csrf_ok
from dashboards.users import Permission, Role, User


def test_sessions_end_after_idle_time_and_on_logout() -> None:
    sessions = Sessions(idle_s=100.0)
    ada = User("ada", Role.INTENSIVIST)
    a = sessions.create(ada, now_s=0.0)
    b = sessions.create(User("val", Role.VIEWER), now_s=0.0)
    assert a.token != b.token and a.csrf != b.csrf and len(a.token) >= 43
    assert sessions.get(a.token, now_s=90.0) is a  # use keeps it alive
    assert sessions.get(a.token, now_s=180.0) is a
    assert sessions.get(b.token, now_s=180.0) is None  # idle for 180 s
    assert sessions.get("forged", now_s=180.0) is None and sessions.get(None) is None
    sessions.drop(a.token)
    assert sessions.get(a.token, now_s=181.0) is None
    # sessions that ended without a logout are forgotten
    for i in range(5):
        sessions.create(ada, now_s=1000.0 + i)
    sessions.create(ada, now_s=2000.0)
    assert len(sessions) == 1


def test_csrf_token_must_match() -> None:
    session = Sessions(60.0).create(User("ada", Role.NURSE), now_s=0.0)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf[:-1] + "x")


def test_login_limiter_counts_failures_per_key_within_the_window() -> None:
    limiter = LoginLimiter(max_failures=3, window_s=60.0)
    keys = ["addr:10.0.0.1", "user:ada"]
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after_s(keys, now_s=t) == 0
        limiter.failed(keys, now_s=t)
    assert limiter.retry_after_s(keys, now_s=3.0) == 57.0
    # another address trying the same name is held too; another name from elsewhere is not
    assert limiter.retry_after_s(["addr:10.0.0.2", "user:ada"], now_s=3.0) > 0
    assert limiter.retry_after_s(["addr:10.0.0.2", "user:bob"], now_s=3.0) == 0
    assert limiter.retry_after_s(keys, now_s=60.5) == 0  # the first failure has aged out


def test_roles_and_permissions() -> None:
    assert User("v", Role.VIEWER).can(Permission.VIEW)
    assert not User("v", Role.VIEWER).can(Permission.MANAGE_USERS)
    assert not User("i", Role.INTENSIVIST).can(Permission.MANAGE_USERS)
    # the admin holds every permission of a person; only a cart may register as a cart
    assert all(User("a", Role.ADMIN).can(p) for p in Permission if p != Permission.REGISTER_CART)
    assert not User("a", Role.ADMIN).can(Permission.REGISTER_CART)
    assert User("n", Role.NURSE).can(Permission.CONSULT)
    assert User("i", Role.INTENSIVIST).can(Permission.CONSULT)
    assert not User("v", Role.VIEWER).can(Permission.CONSULT)
    cart = User("c", Role.CART, frozenset({"icu1"}))
    assert [p for p in Permission if cart.can(p)] == [Permission.REGISTER_CART]
    assert cart.can_see("icu1") and not cart.can_see("icu2")
    assert User("v", Role.VIEWER).can_see("any-site")
