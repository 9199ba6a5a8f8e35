"""Lazy mode (``prepare_directory(..., lazy=True)``): files fetched when first opened, evicted least
recently used within ``memoryLimitMB`` (``residency``), grouped per directory (``files``), released after
``gc.idleSeconds`` without a reader (``idle_gc``)."""
