"""One error family for the SIP layer. Each error carries the status to answer with."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.sip.message import Request


class SipError(Exception):
    status_hint: int = 400

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


class ParseError(SipError):
    """Bytes that are not a valid SIP message.

    ``partial`` is the request as far as it could be read, when enough of it (Via, From,
    To, Call-ID, CSeq) was readable to address a 400 response; otherwise None and the
    message is dropped.
    """

    def __init__(
        self, message: str, partial: Request | None = None, status_hint: int = 400
    ) -> None:
        super().__init__(message, status_hint)
        self.partial = partial


class TransactionError(SipError):
    """An event a transaction's state does not accept (see the transition tables)."""

    status_hint = 500
