"""Every code that travels in a frame, a ring slot or a journal record, defined once.

Each table is one ``IntEnum``, named for the field it fills. Letters are ASCII where
the protocol uses letters (``../shared/PROTOCOL.md``), so a hex dump of a frame, a
ring or a journal record reads naturally; reasons are small numbers grouped by range.

Jitted kernels cannot look enum members up cheaply at run time, so hot modules copy
the values they need into plain module constants *derived from these enums*
(``_NEW = int(Op.NEW)``), never spelled as a number or an ``ord()`` of a letter:
``tests/test_codes.py`` checks that no module outside this one does that.
"""

from __future__ import annotations

import enum

__all__ = [
    "MsgType",
    "Op",
    "Side",
    "OrderType",
    "Tif",
    "ReplyType",
    "Reason",
    "EventKind",
    "EventReason",
    "Stp",
    "RiskLimit",
    "Tag",
    "FixMsgType",
    "FIX44_MSG_TYPES",
    "FixSide",
    "FixOrdType",
    "FixTimeInForce",
    "ExecInst",
    "ExecType",
    "OrdStatus",
    "OrdRejReason",
    "CxlRejReason",
    "CxlRejResponseTo",
    "SessionRejectReason",
    "BusinessRejectReason",
]


class MsgType(enum.IntEnum):
    """``msg_type`` of a client-to-exchange frame (order entry protocol v1)."""

    LOGIN = ord("L")
    NEW = ord("N")
    CANCEL = ord("C")
    REPLACE = ord("R")
    HEARTBEAT = ord("H")
    # project additions (docs/protocol.md, "Beyond version 1"):
    MASS_CANCEL = ord("M")  # every order of the session's account: symbol blank = every symbol, side 0 = both
    RISK = ord("Y")  # operator sessions only: set one ``RiskLimit`` of an account or a symbol


class Op(enum.IntEnum):
    """``COMMAND.msg_type``: what a command in an in-ring asks the matcher for. The
    letters are the frame's: the gateway copies requests into the ring as they came."""

    NEW = MsgType.NEW.value
    CANCEL = MsgType.CANCEL.value
    REPLACE = MsgType.REPLACE.value
    MASS_CANCEL = MsgType.MASS_CANCEL.value
    RISK = MsgType.RISK.value
    # Made by the gateway, never accepted from a client: cancel every order of
    # ``account`` because its last session went away (cancel-on-disconnect).
    DISCONNECT = ord("D")


class RiskLimit(enum.IntEnum):
    """Which limit an ``Op.RISK`` command sets, in its ``side`` byte; the value is in its
    ``price`` field and the account it applies to in ``order_id`` (0: the symbol's
    limit, for every account). A value of 0 removes the limit."""

    MAX_ORDER_QTY = ord("Q")  # largest quantity of one order (account or symbol)
    MAX_NOTIONAL = ord("V")  # largest price x quantity of one order (account or symbol)
    MAX_OPEN_ORDERS = ord("O")  # most resting orders of one account in the book (account or symbol)
    COLLAR_BPS = ord("C")  # symbol only: orders may not be priced further than this from the reference
    REFERENCE_PRICE = ord("P")  # symbol only: the collar's centre until the first trade
    KILL_SWITCH = ord("K")  # account only: 1 cancels its orders and refuses new ones, 0 lets it trade again
    CLEAR = ord("X")  # symbol only, value 0: remove every limit of the book (kill switches stay)


class Side(enum.IntEnum):
    BUY = ord("B")
    SELL = ord("S")


class OrderType(enum.IntEnum):
    LIMIT = ord("L")
    MARKET = ord("M")


class Tif(enum.IntEnum):
    GTC = ord("G")
    IOC = ord("I")
    FOK = ord("F")
    POST_ONLY = ord("P")


class ReplyType(enum.IntEnum):
    """``msg_type`` of an exchange-to-client frame."""

    LOGIN_ACCEPTED = ord("A")
    LOGIN_REJECTED = ord("J")
    ACK = ord("K")
    REJECT = ord("X")
    HEARTBEAT = ord("H")
    ERROR = ord("E")


class Reason(enum.IntEnum):
    """Why the gateway rejected a request (``X``/``J``) or closed a session (``E``)."""

    OK = 0
    NOT_LOGGED_IN = 1
    BAD_CREDENTIALS = 2
    UNKNOWN_SYMBOL = 3
    BAD_SIDE = 4
    BAD_ORDER_TYPE = 5
    BAD_QTY = 6
    BAD_PRICE = 7
    UNKNOWN_MESSAGE = 8
    THROTTLED = 9
    NOT_READY = 10
    ALREADY_LOGGED_IN = 11
    BAD_ORDER_ID = 12
    # project additions: only ever sent with ``E``, just before the close
    IDLE_TIMEOUT = 13
    SESSION_LIMIT = 14
    # project additions for the ``M`` and ``Y`` requests
    NOT_PERMITTED = 15  # ``Y`` from a session whose account is not an operator
    BAD_LIMIT = 16  # ``Y`` naming an unknown limit, a negative value, or a limit the target cannot have


class EventKind(enum.IntEnum):
    """``EVENT.kind``: what the matcher did."""

    ACCEPTED = ord("A")
    TRADE = ord("T")
    CANCELLED = ord("C")
    REPLACED = ord("R")
    REJECTED = ord("J")
    # after a mass cancel or a cancel-on-disconnect: how many orders it cancelled
    MASS_CANCELLED = ord("M")
    # an ``Op.RISK`` command took effect
    LIMIT_SET = ord("L")


class EventReason(enum.IntEnum):
    """``EVENT.reason``, grouped by range: 0 none, 1-19 why an order was cancelled,
    20-39 why the matcher rejected a command, 40-59 which pre-trade risk check refused
    it (``ringex.engine.risk``)."""

    NONE = 0
    # cancelled
    USER_REQUEST = 1
    IOC_REMAINDER = 2
    FOK_UNFILLED = 3
    SELF_TRADE = 4
    NO_LIQUIDITY = 5
    MASS_CANCEL = 6
    KILL_SWITCH = 7
    DISCONNECT = 8
    # rejected
    UNKNOWN_ORDER = 20
    NOT_OWNER = 21
    BOOK_FULL = 22
    WOULD_TRADE = 23
    BAD_PRICE = 24
    BAD_QTY = 25
    BAD_ORDER_TYPE = 26
    DUPLICATE_ORDER_ID = 27
    # refused by pre-trade risk
    RISK_MAX_QTY = 40
    RISK_MAX_NOTIONAL = 41
    RISK_PRICE_COLLAR = 42
    RISK_MAX_OPEN_ORDERS = 43
    RISK_KILL_SWITCH = 44
    RISK_TABLE_FULL = 45


class Stp(enum.IntEnum):
    """A symbol's self-trade prevention mode (the config's ``stp`` names, lower-cased),
    as the book's header stores it."""

    OFF = 0
    CANCEL_NEWEST = 1
    CANCEL_OLDEST = 2
    CANCEL_BOTH = 3

    @classmethod
    def from_name(cls, name: str) -> Stp:
        return cls[name.upper()]


####################################################################################
# FIX 4.4 (ringex.fix): tag numbers and the values of the fields the acceptor speaks,
# as the FIX 4.4 specification (and QuickFIX's FIX44.xml) spell them. FIX values are
# text on the wire, so these are ``StrEnum``s of their wire form.
####################################################################################


class Tag(enum.IntEnum):
    """FIX 4.4 tag numbers of every field ringex reads or writes."""

    Account = 1
    AvgPx = 6
    BeginSeqNo = 7
    BeginString = 8
    BodyLength = 9
    CheckSum = 10
    ClOrdID = 11
    CumQty = 14
    EndSeqNo = 16
    ExecID = 17
    ExecInst = 18
    LastPx = 31
    LastQty = 32
    MsgSeqNum = 34
    MsgType = 35
    NewSeqNo = 36
    OrderID = 37
    OrderQty = 38
    OrdStatus = 39
    OrdType = 40
    OrigClOrdID = 41
    PossDupFlag = 43
    Price = 44
    RefSeqNum = 45
    SenderCompID = 49
    SendingTime = 52
    Side = 54
    Symbol = 55
    TargetCompID = 56
    Text = 58
    TimeInForce = 59
    TransactTime = 60
    PossResend = 97
    EncryptMethod = 98
    CxlRejReason = 102
    OrdRejReason = 103
    HeartBtInt = 108
    TestReqID = 112
    OrigSendingTime = 122
    GapFillFlag = 123
    ResetSeqNumFlag = 141
    ExecType = 150
    LeavesQty = 151
    RefTagID = 371
    RefMsgType = 372
    SessionRejectReason = 373
    BusinessRejectRefID = 379
    BusinessRejectReason = 380
    CxlRejResponseTo = 434
    Username = 553
    Password = 554
    LastLiquidityInd = 851


class FixMsgType(enum.StrEnum):
    """MsgType (35) of the messages ringex's FIX acceptor handles or sends."""

    HEARTBEAT = "0"
    TEST_REQUEST = "1"
    RESEND_REQUEST = "2"
    REJECT = "3"
    SEQUENCE_RESET = "4"
    LOGOUT = "5"
    EXECUTION_REPORT = "8"
    ORDER_CANCEL_REJECT = "9"
    LOGON = "A"
    NEW_ORDER_SINGLE = "D"
    ORDER_CANCEL_REQUEST = "F"
    ORDER_CANCEL_REPLACE_REQUEST = "G"
    BUSINESS_MESSAGE_REJECT = "j"


# Every MsgType FIX 4.4 defines: one outside this set is a session-level Reject
# (SessionRejectReason 11); one inside it that ringex does not handle is answered with
# a BusinessMessageReject (unsupported message type).
FIX44_MSG_TYPES = frozenset(
    [*"0123456789ABCDEFGHJKLMNPQRSTVWXYZabcdefghijklmnopqrstuvwxyz"]
    + [f"A{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    + [f"B{c}" for c in "ABCDEFGH"]
)  # (FIX 4.4 has no MsgType "I", "O" or "U")


class FixSide(enum.StrEnum):
    BUY = "1"
    SELL = "2"


class FixOrdType(enum.StrEnum):
    MARKET = "1"
    LIMIT = "2"


class FixTimeInForce(enum.StrEnum):
    DAY = "0"
    GOOD_TILL_CANCEL = "1"
    IMMEDIATE_OR_CANCEL = "3"
    FILL_OR_KILL = "4"


class ExecInst(enum.StrEnum):
    # "participate, do not initiate": FIX's post-only
    PARTICIPATE_DONT_INITIATE = "6"


class ExecType(enum.StrEnum):
    NEW = "0"
    CANCELED = "4"
    REPLACED = "5"
    REJECTED = "8"
    TRADE = "F"


class OrdStatus(enum.StrEnum):
    NEW = "0"
    PARTIALLY_FILLED = "1"
    FILLED = "2"
    CANCELED = "4"
    REJECTED = "8"
    PENDING_NEW = "A"


class OrdRejReason(enum.StrEnum):
    BROKER_OPTION = "0"
    UNKNOWN_SYMBOL = "1"
    EXCHANGE_CLOSED = "2"
    ORDER_EXCEEDS_LIMIT = "3"
    UNKNOWN_ORDER = "5"
    DUPLICATE_ORDER = "6"
    UNSUPPORTED_ORDER_CHARACTERISTIC = "11"
    INCORRECT_QUANTITY = "13"
    OTHER = "99"


class CxlRejReason(enum.StrEnum):
    TOO_LATE_TO_CANCEL = "0"
    UNKNOWN_ORDER = "1"
    BROKER_OPTION = "2"
    ALREADY_PENDING = "3"
    DUPLICATE_CL_ORD_ID = "6"
    OTHER = "99"


class CxlRejResponseTo(enum.StrEnum):
    ORDER_CANCEL_REQUEST = "1"
    ORDER_CANCEL_REPLACE_REQUEST = "2"


class SessionRejectReason(enum.StrEnum):
    INVALID_TAG_NUMBER = "0"
    REQUIRED_TAG_MISSING = "1"
    TAG_NOT_DEFINED_FOR_MESSAGE_TYPE = "2"
    UNDEFINED_TAG = "3"
    TAG_WITHOUT_VALUE = "4"
    VALUE_INCORRECT = "5"
    INCORRECT_DATA_FORMAT = "6"
    COMP_ID_PROBLEM = "9"
    SENDING_TIME_ACCURACY = "10"
    INVALID_MSG_TYPE = "11"
    TAG_APPEARS_MORE_THAN_ONCE = "13"
    OTHER = "99"


class BusinessRejectReason(enum.StrEnum):
    OTHER = "0"
    UNKNOWN_ID = "1"
    UNKNOWN_SECURITY = "2"
    UNSUPPORTED_MESSAGE_TYPE = "3"
    APPLICATION_NOT_AVAILABLE = "4"
    CONDITIONALLY_REQUIRED_FIELD_MISSING = "5"
