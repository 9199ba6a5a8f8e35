"""Fleet mode: the nodes preparing one directory pull each chunk from OSS once and pass it to each other.

Torch-free except :mod:`~ossmodelconnector.fleet.group`, which only :class:`~.exchange.FleetExchange`'s
thread imports, and only once fleet mode is on (the ``ossmodelconnector[fleet]`` extra).
"""
