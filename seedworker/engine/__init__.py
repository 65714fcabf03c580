"""The engine: the batch processor (messages -> one batch to store and send) and what composes it: the worker's
poll loop, partition ownership, the replay."""
