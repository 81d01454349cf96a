"""The one way into the services: `dispatch(principal, operation, params)`.

Every door (the SageMaker wire protocol, the build routes, the browser sign-in, the console, the session proxy)
turns its credentials into a `Principal` and calls this; no door calls a service around it, so none can skip a
check. In order:

1. the operation must exist in a model and be implemented (UnknownOperationException);
2. policy: may this principal call it at all (AccessDeniedException, audited);
3. validation of the members against the model (ValidationException naming the member);
4. policy with the resource the validated members name (AccessDeniedException, audited);
5. the service call, with the principal set for services that scope their answer (`byoi.auth.principal`);
6. output shaping from the model; every change (and every failed attempt at one) is audited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import regex

from byoi.api.model import operation
from byoi.api.shaping import shape_output
from byoi.api.validation import validate_request
from byoi.auth.policy import is_mutating, user_rule
from byoi.auth.principal import Principal, acting_as
from byoi.errors import AccessDeniedException, ByoiError, UnknownOperationException
from byoi.services.access import AccessService, resource_arn
from byoi.services.audit import AuditLog

Operation = Callable[..., Awaitable[dict[str, Any]]]
_CAMEL_BOUNDARY = regex.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake(name: str) -> str:
    """`CreateImageVersion` -> `create_image_version`, `MLFramework` -> `ml_framework`."""
    return _CAMEL_BOUNDARY.sub("_", name).lower()


class Dispatcher:
    def __init__(
        self,
        operations: dict[str, Operation],
        access: AccessService,
        audit: AuditLog,
    ) -> None:
        self.operations = operations
        self.access = access
        self.audit = audit

    async def dispatch(self, principal: Principal, prefix: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call `<prefix>.<name>` with the request's members as `principal`; return the shaped output."""
        op_model = operation(prefix, name)
        handler = self.operations.get(snake(name)) if op_model else None
        if op_model is None or handler is None:
            raise UnknownOperationException(f"Operation {prefix}.{name} is not supported by byoi")
        arn: str | None = None
        try:
            if not principal.is_admin and user_rule(name) is None:
                arn = resource_arn(self.access.ctx, params)
                await self.access.check(principal, name, params)  # refuses, naming the resource
            validated = validate_request(op_model.input_shape, params)
            arn = resource_arn(self.access.ctx, validated)
            await self.access.check(principal, name, validated)
            with acting_as(principal):
                result = await handler(**{snake(k): v for k, v in validated.items()})
            shaped = shape_output(op_model.output_shape, result)
        except ByoiError as err:
            if isinstance(err, AccessDeniedException) or is_mutating(name):
                await self.audit.record(principal, name, arn, err.code)
            raise
        if is_mutating(name):
            await self.audit.record(principal, name, _created_arn(shaped) or arn, "ok")
        return shaped

    async def authorize(self, principal: Principal, name: str, params: dict[str, Any]) -> None:
        """Policy only, for routes that are not `POST /` operations (build context uploads, build logs): the
        same table and the same audit of refusals as `dispatch`."""
        try:
            await self.access.check(principal, name, params)
        except AccessDeniedException as err:
            await self.audit.record(principal, name, resource_arn(self.access.ctx, params), err.code)
            raise


def _created_arn(output: dict[str, Any]) -> str | None:
    """The ARN a Create operation answers with (ImageArn, DomainArn…), the most precise resource to audit."""
    for key, value in output.items():
        if key.endswith("Arn") and isinstance(value, str) and value.startswith("arn:"):
            return value
    return None
