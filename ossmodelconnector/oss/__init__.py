"""The OSS client: addresses, credentials, signing, pooled HTTP, retries, responses, listing, request log.

Nothing here knows about caches or directories: :class:`~ossmodelconnector.oss.client.OssClient` turns
``(bucket, key, range)`` into bytes in a caller's buffer, and ``responses`` is the one place foreign
errors (socket, ``http.client``, OSS error XML) become the package's own.
"""
