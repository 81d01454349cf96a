"""The one error root of byoi.

Every leaf is named after the wire error code it becomes, so the API door can render any of them
without a mapping table (`type(err).__name__` is the `__type`). Services raise these; exactly one
place (`byoi.api.protocol`) turns them into responses.
"""

from __future__ import annotations


class StartupRefused(Exception):
    """Why this server will not start, in one line a person can act on (another replica's master key, a store
    that does not answer). Never sent to a client, so not a ByoiError: the server's log says it, once, without
    a traceback, and `byoi server` exits with status 3."""


class ByoiError(Exception):
    """Base of every error that reaches a client. `status` is the HTTP status AWS uses for it."""

    status: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        return type(self).__name__


# Modeled SageMaker errors (no "Exception" suffix, as in botocore's model).
class ResourceNotFound(ByoiError):
    pass


class ResourceInUse(ByoiError):
    pass


class ResourceLimitExceeded(ByoiError):
    pass


# Generic AWS errors.
class ValidationException(ByoiError):
    pass


class SerializationException(ByoiError):
    pass


class UnknownOperationException(ByoiError):
    pass


class AccessDeniedException(ByoiError):
    pass


class ThrottlingException(ByoiError):
    pass


class RequestEntityTooLargeException(ByoiError):
    """A request body over the door's cap, refused while it is read (before the signature is checked)."""

    status = 413


# Authentication failures: AWS answers all of these with 403.
class AuthError(ByoiError):
    status = 403


class MissingAuthenticationTokenException(AuthError):
    pass


class IncompleteSignatureException(AuthError):
    pass


class InvalidSignatureException(AuthError):
    pass


class UnrecognizedClientException(AuthError):
    pass


class ConcurrentModification(ByoiError):
    """A compare-and-swap lost: what the caller read has changed since (read again and retry)."""

    status = 409


class InternalFailure(ByoiError):
    """Only ever produced by the API door's last-resort handler; services never raise it."""

    status = 500
