"""The errors kc_tasks raises: one root, a retryable branch and a permanent branch."""

from __future__ import annotations


class KcTasksError(Exception):
    """Raised for every failure kc_tasks itself recognises."""


class ConfigError(KcTasksError):
    """Raised when a setting from the environment is missing or malformed."""


class RetryableError(KcTasksError):
    """Raised when a failure may pass by itself: the task is retried with backoff."""


class DatabaseUnavailable(RetryableError):
    """Raised when PostgreSQL cannot be reached, dropped the connection, or cannot take writes
    now (a standby, a server starting up or shutting down, out of disk or connection slots):
    an outage, which the worker waits out without spending retries (kc_tasks/worker/outage.py)."""


class DatabaseBusy(RetryableError):
    """Raised on serialization failures, deadlocks, lock and statement timeouts: what one
    statement met, which a retry of its task with backoff can cure."""


class PermanentError(KcTasksError):
    """Raised when a retry cannot help: the delivery is given up at once."""


class InvalidPurchase(PermanentError):
    """Raised when create_purchase's kwargs break the contract's rules."""


class InvalidRevocation(PermanentError):
    """Raised when revoke_purchase's kwargs break the contract's rules."""


class RestoreRefused(PermanentError):
    """Raised when a payment's purchase cannot be restored; the message says why, and what to do."""


class DatabaseError(PermanentError):
    """Raised when PostgreSQL rejects a statement for a reason a retry cannot fix."""


class ConflictTargetMissing(DatabaseError):
    """Raised when no unique index can arbitrate ON CONFLICT (SQLSTATE 42P10)."""


class UniqueConflict(DatabaseError):
    """Raised when an INSERT meets a unique index outside ON CONFLICT; names the index."""

    def __init__(self, message: str, constraint: str | None) -> None:
        super().__init__(message)
        self.constraint = constraint


class ProviderApiError(RetryableError):
    """Raised when a payment provider's API fails, times out or answers garbage: the next
    reconciliation tries again. Its message names the provider and the request, never a key;
    `status` is the HTTP status of the last answer (None: no answer, or garbage)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ManagementUnreachable(KcTasksError):
    """Raised when no node's RabbitMQ management API answers (`kc-tasks dlq policy`)."""


class ManagementRefused(KcTasksError):
    """Raised when RabbitMQ's management API refuses a request: the credentials, the vhost, a
    policy definition. Its message names the API's address and the user, never the password."""
