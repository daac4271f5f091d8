"""Which failures a retry can fix: transient ones retry with backoff, permanent ones stop.

Dagster retries any exception under a RetryPolicy except a `Failure` raised with
`allow_retries=False`; bad input, a wrong key or a full disk become such failures, with
the message a person needs, so they fail once and clearly instead of four times slowly.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, Jitter, RetryPolicy

from resources.errors import ModelpubError


def transient_retry(delay_s: float) -> RetryPolicy:
    """Waits `delay_s` (MODELPUB_RETRY_DELAY_S, default 5 s), then twice and four times that."""
    return RetryPolicy(
        max_retries=3, delay=delay_s, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
    )


@contextmanager
def classified_errors() -> Iterator[None]:
    """Every domain error becomes a `Failure` with its one-line message, retried only if
    it is transient."""
    try:
        yield
    except ModelpubError as exc:
        raise Failure(str(exc), allow_retries=exc.transient) from None
