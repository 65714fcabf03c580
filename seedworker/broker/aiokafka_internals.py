"""Every use of aiokafka's private attributes, in this one module.

aiokafka has no public API for what is done here, and a private attribute can change or vanish in any release. So
nothing else in seedworker touches one, and tests/test_aiokafka_internals.py checks that each still exists with the
signature and the behaviour relied on: an upgrade that changes one fails that test, rather than silently turning off
what it was for. At run time a hook that no longer fits is not installed and a warning says so: the worker runs on
without it, as it would with a plain aiokafka.

What is used, all of aiokafka's ``AIOKafkaClient`` (the connection and metadata manager under every producer,
consumer and admin client; a producer exposes it as ``producer.client``, a consumer only as ``consumer._client``):

- ``_metadata_update(cluster_metadata, topics) -> bool``: every metadata request goes through it, including the
  producer sender's retries while a partition has no leader; wrapped to pause between failures.
- ``AIOKafkaConsumer._client`` and ``AIOKafkaClient.fetch_all_metadata()``: the partitions and leaders of a topic
  as the brokers know them now (the consumer's ``partitions_for_topic`` answers from metadata that may be minutes
  old, and ``topics()`` fetches the same but returns only the names).
- ``AIOKafkaProducer._txn_manager.wait_for_transaction_end()``: the future in which the producer's background sender
  leaves the error that ended its transaction (``ProducerFenced`` when another worker fenced it). Once it has, the
  producer's own ``send`` refuses with ``IllegalOperation`` ("not in transaction") and says nothing of why.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

log = logging.getLogger("seedworker.broker.kafka")

# The parameters of AIOKafkaClient._metadata_update (bound) that the pacing wrapper passes on.
METADATA_UPDATE_PARAMETERS = ("cluster_metadata", "topics")

_sleep = asyncio.sleep  # tests record the pauses instead of taking them
_warned = False


def metadata_update_fits(client) -> bool:
    """Whether ``client`` has the private ``_metadata_update`` the pacing wraps, with the signature it expects."""
    update = getattr(client, "_metadata_update", None)
    if update is None or not inspect.iscoroutinefunction(update):
        return False
    try:
        params = tuple(inspect.signature(update).parameters.values())
    except (TypeError, ValueError):
        return False
    return tuple(p.name for p in params) == METADATA_UPDATE_PARAMETERS and all(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
    )


def pace_metadata_updates(client, first_s: float = 0.1, cap_s: float = 1.0) -> bool:
    """Wait between failed metadata updates of an aiokafka client; False (and a warning) when it cannot.

    While a batch waits for a partition without a known leader, aiokafka's sender asks for new metadata again as
    soon as an update fails. With the broker down after a controlled shutdown (which takes the leaders away) every
    attempt fails at once, and the sender spins: measured ~4,000 failed connects a second, each logged twice (58,000
    attempts and 12 MB of log in a 15 s outage). Pausing here (exponentially, up to ``cap_s``) turns that into a few
    attempts a second. aiokafka's ``retry_backoff_ms`` does not apply to this loop, and only the private method
    offers a hook.
    """
    global _warned
    if not metadata_update_fits(client):
        if not _warned:
            _warned = True
            log.warning(
                "this aiokafka (%s) has no AIOKafkaClient._metadata_update%s to wrap: failed metadata "
                "updates are not paced, and a broker outage may make the producer spin",
                _aiokafka_version(),
                METADATA_UPDATE_PARAMETERS,
            )
        return False
    update = client._metadata_update
    if getattr(update, "seedworker_paced", False):
        return True  # paced already: a second wrapper would double every pause
    delay = 0.0

    async def paced(cluster_metadata, topics):
        nonlocal delay
        if delay:
            await _sleep(delay)
        ok = await update(cluster_metadata, topics)
        delay = 0.0 if ok else min(max(delay * 2, first_s), cap_s)
        return ok

    paced.seedworker_paced = True
    client._metadata_update = paced
    return True


async def fetch_all_metadata(consumer):
    """Fresh cluster metadata (all topics: partitions, leaders) through a consumer's own connections.

    Returns aiokafka's ``ClusterMetadata``; raises ``KafkaError`` when no broker answered.
    """
    return await consumer._client.fetch_all_metadata()


def _aiokafka_version() -> str:
    try:
        import aiokafka
    except ImportError:  # pragma: no cover - the bus cannot run without it
        return "not installed"
    return getattr(aiokafka, "__version__", "unknown version")


def transaction_failure(producer) -> BaseException | None:
    """The error the producer's background sender ended its transaction with, or None (none, or not where it is
    looked for)."""
    txn = getattr(producer, "_txn_manager", None)
    end = getattr(txn, "wait_for_transaction_end", None)
    if end is None:
        return None
    waiter = end()
    if not isinstance(waiter, asyncio.Future) or not waiter.done() or waiter.cancelled():
        return None
    return waiter.exception()
