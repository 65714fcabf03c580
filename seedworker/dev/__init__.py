"""Development tools: the local Apache Kafka broker and the `make run` demo. Nothing at runtime imports them."""
