# Registers the broker fixture (KAFKA_BOOTSTRAP_SERVERS, else testcontainers, else the local Apache Kafka).
pytest_plugins = ["tests.kafka_broker"]
