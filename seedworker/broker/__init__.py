"""The message bus: its Protocol, aiokafka's implementation, the in-memory one for tests, Kafka security, and the
Tamiyo-side client."""
