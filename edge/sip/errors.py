"""The SIP layer's error family, by name: each error carries the status to answer with.

The classes live in `edge.sip.message` (a ParseError carries the partly parsed Request,
and the compiled parser raises them); this module names them for callers that only
handle errors, without a cycle between the two modules.
"""

from edge.sip.message import ParseError, SipError, TransactionError

__all__ = ["ParseError", "SipError", "TransactionError"]
