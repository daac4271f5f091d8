"""Which failures a retry can fix: transient ones retry with backoff, permanent ones stop.

Dagster retries any exception under a RetryPolicy except a `Failure` raised with
`allow_retries=False`; bad input, a wrong key or a full disk become such failures, with
the message a person needs, so they fail once and clearly instead of four times slowly.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, Jitter, RetryPolicy

from dagster_project.catalog import CatalogError
from resources.artifact import StagingFull
from resources.hub import HubError
from resources.keys import KeyStoreError
from resources.registry import RegistryError
from resources.store import StoreError
from resources.tensorize import TensorizeError

TRANSIENT_RETRY = RetryPolicy(
    max_retries=3, delay=5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
PERMANENT = (CatalogError, KeyStoreError, RegistryError, TensorizeError, StagingFull)


@contextmanager
def classified_errors() -> Iterator[None]:
    try:
        yield
    except (HubError, StoreError) as exc:
        raise Failure(str(exc), allow_retries=exc.transient) from None
    except PERMANENT as exc:
        raise Failure(str(exc), allow_retries=False) from None
