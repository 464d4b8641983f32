"""What of a caller's identifiers may enter our events, and in what form. Pure.

Everything a SIP peer writes (Call-ID, the dialled and calling numbers, X-Business-Id,
X-Phone-Id) ends up in Kafka, in ClickHouse and in log lines unless it is checked here
first. The rules:

- An identifier we look up (business id, phone id, dialled number) is either one we know
  (configured) or it is refused, and the refusal never stores the caller's string: the
  event keeps an empty field and the reason a `safe_form` of it.
- The Call-ID is RFC 3261 `callid` (`word ["@" word]`, printable ASCII without spaces), at
  most `MAX_CALL_ID` characters; anything else is refused with 400.
- The calling number (From's user part) is informational: it is kept when it is a
  plausible number or name, and replaced by its `safe_form` otherwise.

`safe_form` keeps only characters that cannot break a log line, a SIP header, a JSON
string or SQL text, and truncates: ``'; DROP TABLE calls;--`` becomes ``___DROP_TABLE_calls_--``.
"""

from __future__ import annotations

import re

MAX_CALL_ID = 128
MAX_NUMBER = 32
MAX_ID = 128
SAFE_LIMIT = 40

#: RFC 3261 §25.1 `word` characters, and '@' between two words
_CALL_ID = re.compile(
    r"^[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?$"
)
#: the operator config's id alphabet (trunkline.core.config.ID_RE)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
#: a dialled or calling number: E.164 or a dial string, or a short SIP user name
_NUMBER = re.compile(r"^[+]?[A-Za-z0-9*#._-]{1,32}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+-]")


def safe_form(text: str, limit: int = SAFE_LIMIT) -> str:
    """A form of `text` safe to print anywhere: unsafe characters become '_', and a long
    value is cut with its original length noted (`abc…(8192 chars)`)."""
    clean = _UNSAFE.sub("_", text)
    if len(clean) <= limit:
        return clean
    return f"{clean[:limit]}…({len(text)} chars)"


def valid_call_id(value: str) -> bool:
    return 0 < len(value) <= MAX_CALL_ID and _CALL_ID.match(value) is not None


def valid_id(value: str) -> bool:
    """A business, phone or route id as the operator config allows them."""
    return _ID.match(value) is not None


def valid_number(value: str) -> bool:
    return _NUMBER.match(value) is not None


def calling_number(value: str) -> str:
    """From's user part as the history keeps it: as given when plausible, else safe."""
    return value if not value or valid_number(value) else safe_form(value, MAX_NUMBER)
