"""The contract agreed with the app team: what `POST /score` accepts and answers.

Request:  {"customer_id": str | null, "product_id": str, "k": int (1..100, default 10),
           "exclude": [str] (optional)}
Answer:   {"recommendations": [{"product_id": str, "score": float, "reason": str}],
           "model_version": str, "fallback": null | "viewed_product" | "customer" | "popular"}

Every way a request can be wrong is a `RequestError` with a 4xx status and a message that says
what to fix; the OpenAPI document below is what the server publishes at `/swagger.json`.
"""

import json
from dataclasses import dataclass

MAX_BODY_BYTES = 8192
MAX_ID_LENGTH = 64
MAX_K = 100
DEFAULT_K = 10
MAX_EXCLUDE = 100
FIELDS = ("customer_id", "product_id", "k", "exclude")
FALLBACKS = ("viewed_product", "customer", "popular")
REASONS = ("customer_and_viewed_product", "viewed_product", "customer", "popular")


class RequestError(ValueError):
    """A request the service cannot answer, with the HTTP status to answer it with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ScoreRequest:
    customer_id: str | None
    product_id: str
    k: int = DEFAULT_K
    exclude: tuple[str, ...] = ()


def parse_request(body: bytes) -> ScoreRequest:
    """The request in a POST body, or a `RequestError` saying what is wrong with it."""
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise RequestError(400, "the request body is empty; expected a JSON object")
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: nested too deep
        raise RequestError(400, "the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object")
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s): {', '.join(unknown)[:200]}")

    customer_id = payload.get("customer_id")
    if customer_id is not None:
        customer_id = _identifier(customer_id, "customer_id")
    if "product_id" not in payload:
        raise RequestError(400, "product_id is required")
    product_id = _identifier(payload["product_id"], "product_id")
    k = payload.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int):
        raise RequestError(400, "k must be an integer")
    if not 1 <= k <= MAX_K:
        raise RequestError(400, f"k must be between 1 and {MAX_K}")
    exclude = payload.get("exclude", [])
    if exclude is None:
        exclude = []
    if not isinstance(exclude, list):
        raise RequestError(400, "exclude must be a list of product ids")
    if len(exclude) > MAX_EXCLUDE:
        raise RequestError(400, f"exclude may hold at most {MAX_EXCLUDE} product ids")
    excluded = tuple(_identifier(p, "exclude[]") for p in exclude)
    return ScoreRequest(customer_id, product_id, k, excluded)


def _identifier(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise RequestError(400, f"{name} must be a string")
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise RequestError(400, f"{name} must be 1 to {MAX_ID_LENGTH} characters long")
    return value


def _error_schema() -> dict:
    return {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
    }


def openapi_document() -> dict:
    """The contract as an OpenAPI 3.0 document (served by the inference server)."""
    identifier = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH}
    error = {
        "description": "",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Contoso Retail real-time recommendations",
            "version": "1.0",
            "description": "Recommendations for a customer (or an anonymous session) viewing a "
            "product in the mobile app.",
        },
        "paths": {
            "/score": {
                "post": {
                    "operationId": "recommend",
                    "summary": "Recommendations for the product being viewed",
                    "security": [{}, {"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ScoreRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Recommendations, best first",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ScoreResponse"}
                                }
                            },
                        },
                        "400": {**error, "description": "Malformed request"},
                        "401": {**error, "description": "Missing or wrong API key"},
                        "405": {**error, "description": "Method not allowed"},
                        "413": {**error, "description": "Request body too large"},
                    },
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ScoreRequest": {
                    "type": "object",
                    "required": ["product_id"],
                    "additionalProperties": False,
                    "properties": {
                        "customer_id": {**identifier, "nullable": True},
                        "product_id": identifier,
                        "k": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_K,
                            "default": DEFAULT_K,
                        },
                        "exclude": {
                            "type": "array",
                            "nullable": True,
                            "maxItems": MAX_EXCLUDE,
                            "items": identifier,
                        },
                    },
                },
                "ScoreResponse": {
                    "type": "object",
                    "required": ["recommendations", "model_version", "fallback"],
                    "properties": {
                        "recommendations": {
                            "type": "array",
                            "maxItems": MAX_K,
                            "items": {
                                "type": "object",
                                "required": ["product_id", "score", "reason"],
                                "properties": {
                                    "product_id": {"type": "string"},
                                    "score": {"type": "number"},
                                    "reason": {"type": "string", "enum": list(REASONS)},
                                },
                            },
                        },
                        "model_version": {"type": "string"},
                        "fallback": {"type": "string", "enum": list(FALLBACKS), "nullable": True},
                    },
                },
                "Error": _error_schema(),
            },
        },
    }


if __name__ == "__main__":
    import sys
    from pathlib import Path

    target = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "swagger3.json")
    target.write_text(json.dumps(openapi_document(), indent=2) + "\n")
