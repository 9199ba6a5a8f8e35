"""Command line of ``localoss``: ``python -m ossmodelconnector.localoss --root DIR [--port 0] ...``.

Prints the endpoint (``http://127.0.0.1:PORT``) as its first stdout line, serves until SIGTERM or
SIGINT, then closes every connection and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from ossmodelconnector.localoss.faults import FaultConfig
from ossmodelconnector.localoss.server import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    DEFAULT_DOMAIN,
    DEFAULT_HOST,
    LocalOssServer,
    ServerConfig,
)

__all__ = ["build_parser", "main"]

log = logging.getLogger("ossmodelconnector.localoss")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 (off) or a positive number")
    return value


class _Redact(logging.Filter):
    """Replace the secret and the STS token in every log record, whichever module logs them."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self._secrets):
            for secret in self._secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``localoss`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ossmodelconnector.localoss",
        description="A local OSS-compatible (and S3-compatible) HTTP server over a folder: "
        "ROOT/<bucket>/<key>. Prints its endpoint as the first line of stdout.",
    )
    parser.add_argument("--root", required=True, type=Path, help="folder served: ROOT/<bucket>/<key>")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", default=0, type=int, help="TCP port, 0 for any free one (default 0)")
    parser.add_argument(
        "--domain",
        default=DEFAULT_DOMAIN,
        help="the server's domain: 'Host: <bucket>.<domain>' is virtual-hosted addressing "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--access-key-id", default=DEFAULT_ACCESS_KEY_ID, help="access key id accepted (default %(default)s)"
    )
    parser.add_argument(
        "--access-key-secret",
        default=DEFAULT_ACCESS_KEY_SECRET,
        help=f"secret of that key (default {DEFAULT_ACCESS_KEY_SECRET}); never logged",
    )
    parser.add_argument("--sts-token", default=None, help="require this security token on every request")
    parser.add_argument(
        "--sts-token-file",
        default=None,
        type=Path,
        help='accept the tokens of this JSON file {"<token>": <expiry epoch seconds or null>}, re-read when '
        "it changes; an expired token is refused with SecurityTokenExpired",
    )
    faults = parser.add_argument_group("fault injection and throttling (all off by default)")
    faults.add_argument(
        "--seed", type=int, default=None, help="seed of the fault decisions (reproducible runs)"
    )
    faults.add_argument("--latency-ms", type=_non_negative, default=0.0, help="delay before each response")
    faults.add_argument(
        "--bandwidth-mibps", type=_non_negative, default=0.0, help="cap on all object bodies together, MiB/s"
    )
    faults.add_argument(
        "--conn-bandwidth-mibps",
        type=_non_negative,
        default=0.0,
        help="cap on object bodies per connection, MiB/s",
    )
    faults.add_argument(
        "--fault-503", type=_fraction, default=0.0, help="fraction of requests answered 503 SlowDown"
    )
    faults.add_argument(
        "--fault-reset", type=_fraction, default=0.0, help="fraction of GET bodies cut by a connection reset"
    )
    faults.add_argument(
        "--fault-short",
        type=_fraction,
        default=0.0,
        help="fraction of GET bodies shorter than Content-Length",
    )
    faults.add_argument(
        "--fault-corrupt", type=_fraction, default=0.0, help="fraction of GET bodies with one byte flipped"
    )
    faults.add_argument(
        "--fault-stall",
        type=_fraction,
        default=0.0,
        help="fraction of responses held back --stall-ms before their first byte (latency spikes)",
    )
    faults.add_argument(
        "--stall-ms", type=_non_negative, default=0.0, help="length of a --fault-stall spike, in milliseconds"
    )
    faults.add_argument(
        "--fault-xml-bomb",
        action="store_true",
        help="answer listings and error documents with a 'billion laughs' XML document (entity expansion)",
    )
    faults.add_argument(
        "--ignore-if-match",
        action="store_true",
        help="serve GETs whatever their If-Match says (a proxy or server that ignores the condition)",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level on stderr; DEBUG adds one access line per request (default %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit code: 0 after a clean shutdown.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Defence in depth: a string-to-sign logged at DEBUG may embed the STS token.
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact([args.access_key_secret, args.sts_token or ""]))
    config = ServerConfig(
        root=args.root,
        host=args.host,
        port=args.port,
        domain=args.domain,
        access_key_id=args.access_key_id,
        access_key_secret=args.access_key_secret,
        sts_token=args.sts_token,
        sts_token_file=args.sts_token_file,
        faults=FaultConfig(
            seed=args.seed,
            latency_ms=args.latency_ms,
            bandwidth_mibps=args.bandwidth_mibps,
            conn_bandwidth_mibps=args.conn_bandwidth_mibps,
            fault_503=args.fault_503,
            fault_reset=args.fault_reset,
            fault_short=args.fault_short,
            fault_corrupt=args.fault_corrupt,
            fault_stall=args.fault_stall,
            stall_ms=args.stall_ms,
            xml_bomb=args.fault_xml_bomb,
            ignore_if_match=args.ignore_if_match,
        ),
    )
    server = LocalOssServer(config)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("localoss: signal %d, shutting down", signum)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.endpoint, flush=True)
    log.info("localoss serving %s on %s (%r)", config.root, server.endpoint, config.faults)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
