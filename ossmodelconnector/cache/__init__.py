"""The shared-memory cache: what every process on the node maps, so that it holds one copy of a model.

One data segment per large file (``segments``, kept while any process holds it: ``segment_hold``), one
state table per prepared directory (``state_table``: a state byte per chunk, a futex generation), the
manifest that names them (``manifest``), the demand ring readers post to (``demand``); ``shared_cache``
creates and recovers them for the owner and ``shared_backing`` stores fetched chunks into them. Another
process's directory is read through ``attached`` (its table mapped, waits on its futex), reached by
``attaching`` (on first lookup, or after ``fork``); ``peer_source`` waits on another directory that fetches
the same object version. ``registry`` is the table of files the reader hooks consult. Layout:
``docs/cache-layout.md``.
"""
