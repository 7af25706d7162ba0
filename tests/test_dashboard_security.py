"""Session and login-limit bookkeeping, on an explicit clock."""

from __future__ import annotations

from dashboards.security import LoginLimiter, Sessions, csrf_ok
from dashboards.users import Permission, Role, User
from eicu.models import BedKey


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


def test_login_limiter_locks_a_name_per_address_and_slows_it_everywhere() -> None:
    limiter = LoginLimiter(3, 60.0, address_max=5, user_free=4, user_delay_max_s=2.0)
    for t in (0.0, 1.0, 2.0):
        assert limiter.retry_after_s("ada", "10.0.0.1", now_s=t) == 0
        limiter.failed("Ada", "10.0.0.1", now_s=t)
    assert limiter.retry_after_s("ada", "10.0.0.1", now_s=3.0) == 57.0
    # the same name from another address is not locked out; another name from here neither
    assert limiter.retry_after_s("ada", "10.0.0.2", now_s=3.0) == 0
    assert limiter.retry_after_s("bob", "10.0.0.1", now_s=3.0) == 0
    assert limiter.delay_s("ada", now_s=3.0) == 0
    # failures for one name from many addresses slow that name down, up to the ceiling
    for i, t in enumerate((4.0, 5.0, 6.0, 7.0, 8.0)):
        limiter.failed("ada", f"10.0.1.{i}", now_s=t)
    assert limiter.delay_s("ada", now_s=9.0) == 2.0  # 8 failures, 4 free: 0.25 * 2**3
    assert limiter.retry_after_s("ada", "10.0.0.9", now_s=9.0) == 0  # never a lock
    # an address failing for many names is locked for all of them
    for name in ("b1", "b2", "b3", "b4"):
        limiter.failed(name, "10.0.0.3", now_s=10.0)
    assert limiter.retry_after_s("zed", "10.0.0.3", now_s=10.0) == 0
    limiter.failed("b5", "10.0.0.3", now_s=10.0)
    assert limiter.retry_after_s("zed", "10.0.0.3", now_s=11.0) == 59.0
    assert limiter.retry_after_s("ada", "10.0.0.1", now_s=60.5) == 0  # aged out
    # a right password clears its own pair only
    limiter.failed("cy", "10.0.0.4", now_s=70.0)
    limiter.succeeded("cy", "10.0.0.4")
    assert limiter.retry_after_s("cy", "10.0.0.4", now_s=70.0) == 0


def test_a_session_follows_its_user_and_ends_when_removed_or_re_keyed() -> None:
    current = {"ada": User("ada", Role.NURSE, credential="k1")}
    sessions = Sessions(100.0, current.get)
    session = sessions.create(current["ada"], now_s=0.0)
    current["ada"] = User("ada", Role.VIEWER, frozenset({"icu2"}), credential="k1")
    got = sessions.get(session.token, now_s=1.0)
    assert got is session and session.user.role is Role.VIEWER
    assert not session.user.can(Permission.RESPOND) and not session.user.can_see("icu1")
    current["ada"] = User("ada", Role.VIEWER, credential="k2")  # a new password
    assert sessions.get(session.token, now_s=2.0) is None
    again = sessions.create(current["ada"], now_s=3.0)
    del current["ada"]
    assert sessions.get(again.token, now_s=4.0) is None and len(sessions) == 0


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
    cart = User("c", Role.CART, frozenset({"icu1"}), BedKey("icu1", "bed1"))
    assert [p for p in Permission if cart.can(p)] == [Permission.REGISTER_CART]
    assert cart.can_see("icu1") and not cart.can_see("icu2")
    assert User("v", Role.VIEWER).can_see("any-site")
