"""The gateway: the national axis protocol (VXP adapter) in front of the exchange.

Document-management systems that speak the axis protocol through its SDK
(``protocols/vxp.md``) connect here unchanged. :mod:`.auth` checks the SDK's
HMAC, :mod:`.protocol` holds the replies and error codes, :mod:`.submit`
turns a ``sendEdoc`` into checked (and, when needed, signed) messages,
:mod:`.mover` moves agencies' queues into the PostgreSQL mailbox, :mod:`.app`
serves the operations, :mod:`.commands` adds ``lienthong gateway`` and
``lienthong system``. docs/gateway.md says how to run it.
"""
