"""The error taxonomy: every failure is retriable, permanent (poison) or a config error.

The runner decides what happens to a message from the class alone: retriable
errors release it for redelivery with a backoff, permanent ones dead-letter it with
the reason, and configuration errors stop start-up before anything is consumed.
Errors carry the name of the component that raised them (Substation's habit) so
a dead-letter reason says *where* as well as *what*.
"""

from __future__ import annotations


class RiposteError(Exception):
    """Base class. ``reason`` is a short machine-readable code used as a metric label."""

    retriable: bool = False
    default_reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, component: str | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.component = component

    def __str__(self) -> str:
        if self.component:
            return f"{self.component}: {self.message}"
        return self.message


class RetriableError(RiposteError):
    """Transient: throttling, timeouts, 5xx, a sink that is down. Try again later."""

    retriable = True
    default_reason = "transient"


class PermanentError(RiposteError):
    """The input can never succeed (malformed, oversized, forged): dead-letter it."""

    retriable = False
    default_reason = "poison"


class ConfigError(RiposteError):
    """Bad configuration, found at load time rather than at 3 a.m."""

    default_reason = "config"


def attach_component(err: BaseException, component: str) -> RiposteError:
    """Wrap any exception as a RiposteError naming ``component``.

    Unknown exceptions are treated as retriable: a bug or an unexpected library
    error should not throw data away, and the queue's redrive policy (or the
    source's attempt limit) dead-letters a message that keeps failing.
    """
    if isinstance(err, RiposteError):
        if err.component is None:
            err.component = component
        return err
    wrapped = RetriableError(f"{type(err).__name__}: {err}", reason=type(err).__name__,
                             component=component)
    wrapped.__cause__ = err
    return wrapped
