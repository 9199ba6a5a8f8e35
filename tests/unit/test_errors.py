"""The exception tree: built-in parents, attributes, messages, and pickling across processes."""

from __future__ import annotations

import pickle

import pytest

import ossmodelconnector
from ossmodelconnector import errors

ALL_ERRORS = [getattr(errors, name) for name in errors.__all__]

BUILTIN_PARENTS = {
    errors.ConfigError: ValueError,
    errors.CredentialsError: PermissionError,
    errors.InvalidURIError: ValueError,
    errors.ClosedError: ValueError,
    errors.ObjectNotFoundError: FileNotFoundError,
    errors.AccessDeniedError: PermissionError,
    errors.RequestTimeoutError: TimeoutError,
    errors.OutOfMemoryError: MemoryError,
    errors.UnsafePathError: ValueError,
}


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_every_error_is_a_connector_error_and_pickles_with_its_context(
    cls: type[errors.ConnectorError],
) -> None:
    error = cls(
        "oss://b/k: it broke; do X",
        bucket="b",
        key="k",
        range=(0, 10),
        status=503,
        code="SlowDown",
        request_id="RID1",
    )
    assert isinstance(error, ossmodelconnector.ConnectorError)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls
    assert (clone.message, clone.bucket, clone.key, clone.range) == (
        "oss://b/k: it broke; do X",
        "b",
        "k",
        (0, 10),
    )
    assert (clone.status, clone.code, clone.request_id) == (503, "SlowDown", "RID1")
    assert str(clone) == str(error) == "oss://b/k: it broke; do X (request id RID1)"


@pytest.mark.parametrize(
    ("cls", "builtin"), BUILTIN_PARENTS.items(), ids=lambda c: getattr(c, "__name__", "")
)
def test_leaves_are_caught_by_ordinary_except_clauses(cls: type[Exception], builtin: type[Exception]) -> None:
    with pytest.raises(builtin):
        raise cls("x")


def test_error_without_context_pickles() -> None:
    clone = pickle.loads(pickle.dumps(errors.IntegrityError("crc mismatch")))
    assert str(clone) == "crc mismatch"
    assert clone.bucket is None and clone.request_id is None
