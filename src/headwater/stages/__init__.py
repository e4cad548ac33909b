"""Pure, synchronous stage functions in flow order; shared by batch, stream and Spark runs.

Nothing here awaits, opens a connection or imports ``pipeline`` or ``adapters``.
"""
