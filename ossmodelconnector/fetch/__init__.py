"""The in-process data path: chunk buffers, delivery into callers' buffers, object handles, the prefetch
scheduler and the ``open()`` stream.

Bytes come from a ``FetchInto`` callable (the OSS client, or another process's segment); they land in a
:class:`~ossmodelconnector.fetch.chunk_buffer.ChunkBuffer`, backed by anonymous memory or by the
shared-memory cache (``ossmodelconnector.cache``), and readers wait per chunk.
"""
