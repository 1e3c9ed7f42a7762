"""What every API route shares: the route class that answers FastAPI's own request
validation errors in the API's error shape, and the error responses each route declares
in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from pgq.web.api.models import Error
from pgq.web.auth import Principal, need

Reader = Annotated[Principal, Depends(need("read"))]
Operator = Annotated[Principal, Depends(need("operate"))]
"""Acts on jobs and queues (recorded as its ``name``)."""
Enqueuer = Annotated[Principal, Depends(need("enqueue"))]

_WHY = {
    401: "No credentials, or a token or API key that is not (or no longer) valid.",
    403: "Authenticated, without the scope this route needs.",
    404: "No such job.",
    422: "Bad input: pgq's one-line message, or a body or parameter of the wrong type "
         "(type RequestValidationError).",
    503: "The database does not answer.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: ``codes`` plus 401 and 503, each an ``Error``.
    Declaring 422 here also replaces FastAPI's default validation-error schema, which
    no longer describes what the API answers (see ``ApiRoute``)."""
    return {code: {"model": Error, "description": _WHY[code]}
            for code in sorted({401, 503, *codes})}


def first_line(exc: RequestValidationError) -> str:
    """``field: reason`` of the first error (the rest are usually the same mistake)."""
    problems = exc.errors()
    if not problems:
        return "invalid request"
    problem = problems[0]
    where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body") or "body"
    reason = " ".join(str(problem.get("msg", "invalid")).split())
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {reason}{more}"


class ApiRoute(APIRoute):
    """An API route: a body or parameter of the wrong type answers 422 ``{"error":
    "field: reason", "type": "RequestValidationError"}`` like pgq's own errors, instead
    of FastAPI's list of error objects, and so does a body that is not even UTF-8
    (FastAPI's 400). The pages keep FastAPI's answers: this class is the API's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return JSONResponse({"error": first_line(exc), "type": "RequestValidationError"},
                                    422)
            except HTTPException as exc:
                if exc.status_code != 400:
                    raise
                # A body FastAPI cannot even decode (not UTF-8): bad input like any other.
                return JSONResponse({"error": f"body: {exc.detail}",
                                     "type": "RequestValidationError"}, 422)
        return answer
