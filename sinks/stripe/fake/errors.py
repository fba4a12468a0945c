"""Stripe's error answers, as the fake gives them, and its object ids."""

from __future__ import annotations

import secrets
from typing import Any


class StripeError(Exception):
    """An error response: HTTP status, Stripe's error type, code, message and param."""

    def __init__(
        self, status: int, type_: str, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def body(self) -> dict[str, Any]:
        """Stripe's error object (https://docs.stripe.com/api/errors): `doc_url`, "a URL to more
        information about the error code reported", wherever a code is; v1 and v2 alike."""
        error: dict[str, Any] = {"type": self.type, "message": str(self)}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}


def invalid(message: str, code: str | None = None, param: str | None = None) -> StripeError:
    return StripeError(400, "invalid_request_error", message, code, param)


def missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'", "resource_missing", param
    )


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
