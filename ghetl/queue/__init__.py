"""The message queues between the stages: `broker` holds the protocol, the message fields and
the in-process `memory://` broker; `rabbitmq` the same over RabbitMQ, for workers on other hosts."""
