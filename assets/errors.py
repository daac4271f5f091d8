"""Which failures a retry can fix: transient ones retry with backoff, permanent ones stop.

Dagster retries any exception under a RetryPolicy except a `Failure` raised with
`allow_retries=False`; bad input, a wrong key or a full disk become such failures, with
the message a person needs, so they fail once and clearly instead of four times slowly.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, Jitter, RetryPolicy

from resources.errors import ModelpubError
from resources.settings import Settings

# Waits MODELPUB_RETRY_DELAY_S (default 5 s), then twice and four times that.
TRANSIENT_RETRY = RetryPolicy(
    max_retries=3,
    delay=Settings.from_env().retry_delay_s,
    backoff=Backoff.EXPONENTIAL,
    jitter=Jitter.PLUS_MINUS,
)


@contextmanager
def classified_errors() -> Iterator[None]:
    """Every domain error becomes a `Failure` with its one-line message, retried only if
    it is transient."""
    try:
        yield
    except ModelpubError as exc:
        raise Failure(str(exc), allow_retries=exc.transient) from None
