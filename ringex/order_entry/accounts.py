"""Order entry accounts and their secrets, and the ``ringex accounts`` subcommand.

An account is a u64 id with a u64 token (the login frame's ``account`` and ``token``
fields). The file ``accounts.json`` in the data directory keeps, per account, a
random salt and the scrypt hash of the token, never the token itself: whoever reads
the file cannot log in. The token is shown once, when the account is added.

scrypt is slow on purpose (~30 ms here with the parameters below), which is right for
a file that may leak and wrong for a gateway that verifies a login per session. So
``AccountStore.verify`` remembers each (account, token) pair it has verified, in
memory, keyed by a fast keyed hash of the pair; a repeat login costs a dict lookup.
The file is re-read when its modification time changes, so ``ringex accounts
add``/``remove`` take effect in a running gateway (and a removed account's cached
verification is dropped with the rest of the cache).

An account may be an *operator*: its sessions may also set risk limits and kill
switches (the ``Y`` request, ``ringex risk``). The gateway asks ``is_operator`` at login.

Demo accounts (the first start of a data directory): their tokens are also kept in
``demo-accounts.json`` next to the account file, readable by its owner only, and written
*before* the accounts are, so a first start that fails or is interrupted never loses
them: the next start uses the same tokens. The file also says whether a banner has
shown them (``mark_demo_shown``): a start that fails before its banner leaves them
unshown, and the next banner shows them (``unshown_demo_accounts``); after that,
``ringex accounts demo`` does (``demo_accounts``). That file is the one exception to "never the token": it is a
convenience for the local operator of a demo; ``ringex accounts add``/``remove`` of a
demo account drop it from the file, so what it shows always works.

Public API used by the gateway and the notifier::

    store = AccountStore.open(data_dir)      # or AccountStore(path)
    store.verify(account: int, token: int) -> bool
    store.verify_nowait(account, token) -> bool | None      # None: only verify() can tell
    store.add(account: int, token: int | None = None, operator=None) -> int   # returns the token
    store.remove(account: int) -> bool
    store.accounts() -> list[int]
    store.is_operator(account) -> bool
    create_demo_accounts(data_dir, count=3) -> dict[int, int]  # {account: token}, only if none exist
    demo_accounts(data_dir) -> dict[int, int]  # the demo tokens still valid
    unshown_demo_accounts(data_dir) -> dict[int, int]  # ... that no banner has shown yet
    mark_demo_shown(data_dir)
    check_executor() -> ThreadPoolExecutor    # one low-priority thread to run ``verify`` on
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from pathlib import Path

__all__ = [
    "AccountStore",
    "AccountError",
    "create_demo_accounts",
    "check_executor",
    "ACCOUNTS_FILE",
    "DEMO_FILE",
    "DEMO_OPERATOR",
    "check_u64",
    "parse_account_id",
    "demo_accounts",
    "forget_demo_account",
    "unshown_demo_accounts",
    "mark_demo_shown",
]

ACCOUNTS_FILE = "accounts.json"
DEMO_FILE = "demo-accounts.json"
U64_MAX = (1 << 64) - 1

# scrypt cost: n=2**14, r=8 is the interactive-login setting recommended by its
# author (~16 MiB, tens of ms); maxmem must allow 128 * n * r bytes plus slack.
SCRYPT_N = 1 << 14
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16
# Demo accounts get ids from here, so they are easy to spot in journals.
DEMO_FIRST_ACCOUNT = 1001
# ... and the demo operator (``ringex risk``) the id just before them.
DEMO_OPERATOR = 1000
# The nice value of the thread that runs the slow checks: scrypt then runs on CPU time
# the exchange's other threads and processes leave over, so a flood of logins (even
# within the failed-login limits) delays logins, not orders or market data.
CHECK_THREAD_NICE = 19


class AccountError(ValueError):
    """A bad account id or token, or an account file that cannot be used; the message says which."""


def check_u64(what: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= U64_MAX:
        raise AccountError(f"{what} must be an integer from 1 to {U64_MAX}, got {value!r}")
    return value


def parse_account_id(text: str, what: str = "account id") -> int:
    """An account id (or token) typed by a person: decimal, or 0x hex; ``AccountError``
    with one plain sentence otherwise."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise AccountError(f"not an {what}: {text!r} (an integer from 1 to {U64_MAX})") from None
    return check_u64(what, value)


def _hash_token(token: int, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(token.to_bytes(8, "little"), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=32)


class AccountStore:
    """The account file at ``path``, with an in-memory cache of verified logins."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._records: dict[int, dict] = {}
        self._mtime_ns: tuple[int, int, int] | None | int = -1
        # keyed by a BLAKE2 MAC of the pair under a per-process key, so the cache never
        # holds a token in the clear either
        self._cache_key_secret = secrets.token_bytes(32)
        self._verified: set[bytes] = set()
        self._lock = threading.Lock()  # a reload and a cache insert from a worker thread
        self._reload_if_changed()

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str]) -> AccountStore:
        """The store of the data directory ``data_dir`` (the file need not exist yet)."""
        return cls(Path(data_dir) / ACCOUNTS_FILE)

    # -- file ------------------------------------------------------------------

    def _stat_mtime(self) -> tuple[int, int, int] | None:
        # the inode changes on every save (write then rename), so a rewrite within the
        # file system's timestamp granularity is still noticed
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _reload_if_changed(self) -> None:
        mtime = self._stat_mtime()
        if mtime == self._mtime_ns:
            return
        records: dict[int, dict] = {}
        if mtime is not None:
            try:
                doc = json.loads(self.path.read_text("utf-8"))
                for key, rec in doc["accounts"].items():
                    records[int(key)] = {
                        "salt": bytes.fromhex(rec["salt"]),
                        "hash": bytes.fromhex(rec["hash"]),
                        "n": int(rec["n"]),
                        "r": int(rec["r"]),
                        "p": int(rec["p"]),
                        "operator": bool(rec.get("operator", False)),
                    }
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise AccountError(f"account file {self.path}: unreadable: {exc}") from None
        with self._lock:
            self._records = records
            self._mtime_ns = mtime
            self._verified.clear()

    def _save(self) -> None:
        doc = {
            "version": 1,
            "kdf": "scrypt",
            "accounts": {
                str(acct): {
                    "salt": r["salt"].hex(),
                    "hash": r["hash"].hex(),
                    "n": r["n"],
                    "r": r["r"],
                    "p": r["p"],
                    **({"operator": True} if r.get("operator") else {}),
                }
                for acct, r in sorted(self._records.items())
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: a reader (a running gateway) sees the old file or the new one
        fd, tmp = tempfile.mkstemp(prefix=".accounts-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        with self._lock:
            self._mtime_ns = self._stat_mtime()
            self._verified.clear()

    # -- API -------------------------------------------------------------------

    def accounts(self) -> list[int]:
        self._reload_if_changed()
        return sorted(self._records)

    def __contains__(self, account: int) -> bool:
        self._reload_if_changed()
        return account in self._records

    def add(self, account: int, token: int | None = None, *, operator: bool | None = None) -> int:
        """Add ``account`` (or give it a new token) and return its token: ``token`` if
        given, else a fresh random u64. Only the salted hash is written. ``operator``:
        whether it may set risk limits (None: as it was, no for a new account)."""
        check_u64("account", account)
        token = secrets.randbelow(U64_MAX) + 1 if token is None else check_u64("token", token)
        self._reload_if_changed()
        if operator is None:
            operator = bool(self._records.get(account, {}).get("operator"))
        salt = secrets.token_bytes(SALT_BYTES)
        self._records[account] = {
            "salt": salt,
            "hash": _hash_token(token, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "operator": operator,
        }
        self._save()
        return token

    def is_operator(self, account: int) -> bool:
        """Whether ``account`` may set risk limits and kill switches. Never raises: a
        file that cannot be read makes nobody an operator."""
        try:
            self._reload_if_changed()
        except AccountError:
            return False
        return bool(self._records.get(account, {}).get("operator"))

    def remove(self, account: int) -> bool:
        """Remove ``account``; False if it was not there."""
        self._reload_if_changed()
        if self._records.pop(account, None) is None:
            return False
        self._save()
        return True

    def _cache_key(self, account: int, token: int) -> bytes:
        return hashlib.blake2b(
            account.to_bytes(8, "little") + token.to_bytes(8, "little"), key=self._cache_key_secret, digest_size=16
        ).digest()

    def verify_nowait(self, account: int, token: int) -> bool | None:
        """What ``verify`` would answer, if that is cheap to know: True for a pair
        verified before, False for a malformed pair or an unknown account, None when
        only the scrypt check can tell (then call ``verify``, off any event loop)."""
        if not (
            isinstance(account, int) and isinstance(token, int) and 0 <= account <= U64_MAX and 0 <= token <= U64_MAX
        ):
            return False
        try:
            self._reload_if_changed()
        except AccountError:
            return False  # a half-broken file denies everyone rather than crashing a server
        if account not in self._records:
            return False
        return True if self._cache_key(account, token) in self._verified else None

    def verify(self, account: int, token: int) -> bool:
        """True if ``token`` is ``account``'s secret. Never raises for bad input.

        Cost: one ``stat`` of the file, plus one scrypt (~tens of ms) the first time a
        given pair is seen; a verified pair is remembered until the file changes.
        Failed attempts are not cached (an attacker must not fill memory), so each
        costs a scrypt: callers facing the network should close the session after a
        failure, as the gateway does, and run this off their event loop (scrypt
        releases the GIL), answering repeat logins with ``verify_nowait``.
        Thread-safe: a loop thread may call ``verify_nowait`` while workers run this.
        """
        quick = self.verify_nowait(account, token)
        if quick is not None:
            return quick
        rec = self._records.get(account)
        if rec is None:
            return False
        ok = hmac.compare_digest(_hash_token(token, rec["salt"], rec["n"], rec["r"], rec["p"]), rec["hash"])
        if ok:
            with self._lock:
                # not if the file changed meanwhile: the pair may be stale already
                if self._records.get(account) is rec:
                    self._verified.add(self._cache_key(account, token))
        return ok


def _lower_thread_priority() -> None:
    # Linux: a thread has a nice value of its own, set by its thread id. Best effort:
    # elsewhere (or without /proc semantics) the check runs at the process's priority.
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CHECK_THREAD_NICE)
    except (OSError, AttributeError):
        pass


def check_executor() -> concurrent.futures.ThreadPoolExecutor:
    """One thread, at nice ``CHECK_THREAD_NICE``, to run ``AccountStore.verify`` on
    (scrypt releases the GIL): the checks run one at a time, off any event loop, and
    only on CPU nothing more urgent wants."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="login-check", initializer=_lower_thread_priority
    )


def _demo_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / DEMO_FILE


def _read_demo_doc(data_dir: str | os.PathLike[str]) -> tuple[dict[int, int], bool]:
    """(tokens, shown) from the demo file; ({}, False) when there is none."""
    try:
        doc = json.loads(_demo_path(data_dir).read_text("utf-8"))
        return {int(acct): int(token) for acct, token in doc["tokens"].items()}, bool(doc.get("shown", False))
    except FileNotFoundError:
        return {}, False
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AccountError(f"demo account file {_demo_path(data_dir)}: unreadable: {exc}") from None


def _read_demo(data_dir: str | os.PathLike[str]) -> dict[int, int]:
    return _read_demo_doc(data_dir)[0]


def _write_demo(data_dir: str | os.PathLike[str], tokens: dict[int, int], shown: bool | None = None) -> None:
    path = _demo_path(data_dir)
    if shown is None:
        shown = _read_demo_doc(data_dir)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".demo-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            doc = {"operator": DEMO_OPERATOR, "shown": shown, "tokens": {str(a): t for a, t in tokens.items()}}
            json.dump(doc, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def create_demo_accounts(data_dir: str | os.PathLike[str], count: int = 3) -> dict[int, int]:
    """For a first start: if the data directory has no accounts, add ``count`` demo
    traders (ids 1001, 1002, ...) and the demo operator (1000) and return ``{account:
    token}``. The tokens are written to ``DEMO_FILE`` first, and taken from it when a
    first start that failed left it behind, so they are never lost. Returns ``{}`` when
    accounts already exist."""
    store = AccountStore.open(data_dir)
    if store.accounts():
        return {}
    tokens = _read_demo(data_dir)
    if not tokens:
        wanted = [DEMO_OPERATOR, *range(DEMO_FIRST_ACCOUNT, DEMO_FIRST_ACCOUNT + count)]
        tokens = {acct: secrets.randbelow(U64_MAX) + 1 for acct in wanted}
        _write_demo(data_dir, tokens, shown=False)
    for acct, token in tokens.items():
        store.add(acct, token, operator=acct == DEMO_OPERATOR)
    return tokens


def demo_accounts(data_dir: str | os.PathLike[str]) -> dict[int, int]:
    """The demo accounts whose tokens are still the ones created (``{}`` if none)."""
    tokens = _read_demo(data_dir)
    if not tokens:
        return {}
    present = set(AccountStore.open(data_dir).accounts())
    return {acct: token for acct, token in tokens.items() if acct in present}


def forget_demo_account(data_dir: str | os.PathLike[str], account: int) -> bool:
    """Drop ``account`` from the demo file (its token was reset or it was removed);
    True if it was there."""
    tokens = _read_demo(data_dir)
    if account not in tokens:
        return False
    del tokens[account]
    _write_demo(data_dir, tokens)
    return True


def unshown_demo_accounts(data_dir: str | os.PathLike[str]) -> dict[int, int]:
    """The demo accounts still valid whose tokens no banner has shown yet (a first start
    that failed or was interrupted before it was ready)."""
    if _read_demo_doc(data_dir)[1]:
        return {}
    return demo_accounts(data_dir)


def mark_demo_shown(data_dir: str | os.PathLike[str]) -> None:
    """A banner has shown the demo tokens: later banners point to ``ringex accounts demo``."""
    tokens, shown = _read_demo_doc(data_dir)
    if tokens and not shown:
        _write_demo(data_dir, tokens, shown=True)
