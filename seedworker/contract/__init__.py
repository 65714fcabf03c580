"""The event contract: the messages on the topics, their headers and their JSON Schemas. Imports nothing else of
seedworker; every other layer speaks it."""
