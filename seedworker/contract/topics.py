"""The topics of the contract under their default names, and the default consumer group. Settings may rename
them (``[kafka.topics]``); the schemas and the AsyncAPI document use these."""

REQUESTS = "graft.requested"
OUTCOMES = "adaptation.outcome"
SELECTIONS = "seed.selected"
DEAD_LETTERS = "seedworker.dlq"
CONTROL = "seedworker.control"
# The workers' state, compacted (seedworker.store.changelog), named after the group; not for Tamiyo.
CHANGELOG_SUFFIX = "-changelog"
GROUP_ID = "seedworker"
CLIENT_ID = "seedworker"
BOOTSTRAP_SERVERS = "127.0.0.1:9092"  # the local broker of `make run` / `make kafka-up`
