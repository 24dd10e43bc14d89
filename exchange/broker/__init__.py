"""Everything RabbitMQ-specific: the topology as data, connecting and declaring,
confirmed publishing, and provisioning through the management API.

The rest of the exchange speaks of messages and queues by the names defined in
:mod:`exchange.broker.topology`.
"""
