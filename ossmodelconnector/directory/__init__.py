"""``prepare_directory``: an OSS prefix made into a local model directory while it is still arriving.

``prepare`` drives it (listing, key planning and the model-directory checks in ``safety``, small files
to disk, large files into the shared cache in ``read_order``); ``attached`` is the other side, a
directory another live process owns; ``lazy/`` holds lazy mode (residency, the per-directory files, idle
GC); ``exported`` is the ``OSSMC_PREPARED_DIRS`` contract with child processes.
"""
