"""Which database errors mean "the database is away" and which mean "it refused this".

Whoever writes to the database retries the first kind for as long as it takes and must
never retry the second: a refused value is refused again on every attempt, and the
writes behind it would wait forever. SQLAlchemy wraps the driver's errors; the driver's
SQLSTATE (PostgreSQL) says which kind an error is.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

__all__ = ["database_unreachable"]

# SQLSTATE classes of a database that is away or briefly cannot serve: connection
# exception, transaction rollback (serialization failure, deadlock), insufficient
# resources, operator intervention (shutdown, cancel), system error. Any other class
# (data exception 22, integrity 23, syntax or access 42, program limit 54 …) refuses
# the statement itself.
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})


def database_unreachable(error: BaseException) -> bool:
    """Whether ``error`` means the database could not be reached or could not serve now.

    True for a lost or refused connection (SQLAlchemy's ``connection_invalidated``, an
    ``InterfaceError``, an ``OperationalError`` without a SQLSTATE, as the driver raises
    when no server answers) and for the transient SQLSTATE classes; false for every
    error that refuses a value or a statement (``DataError``, ``IntegrityError``,
    ``ProgrammingError`` …) and for anything that is not a database error.

    Examples
    --------
    >>> import psycopg
    >>> from sqlalchemy.exc import DataError
    >>> database_unreachable(OperationalError("connect", {}, psycopg.OperationalError("refused")))
    True
    >>> database_unreachable(DataError("insert", {}, psycopg.DataError("NUL")))
    False
    """
    if not isinstance(error, DBAPIError):
        return False
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return True
    if not isinstance(error, OperationalError):
        return False
    sqlstate = getattr(error.orig, "sqlstate", None)
    return not isinstance(sqlstate, str) or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
