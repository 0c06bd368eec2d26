"""The online scoring script, in the Azure ML online endpoint convention (`init()`, `run()`).

The same file runs locally under azureml-inference-server-http (`make serve`) and in an Azure ML
managed online endpoint. `init()` opens the serving bundle under `AZUREML_MODEL_DIR`; `run()`
answers `POST /score` (see `contoso_recs.serving.contract`).

- Raw HTTP access (`@rawhttp`) lets the script answer bad input with a 4xx and a clear message
  instead of the server's generic 500.
- When `CONTOSO_RECS_SERVING_API_KEY` is set, requests must carry
  `Authorization: Bearer <key>`; the key is compared in constant time and never logged.
- Only NumPy, the standard library and the pure serving modules are imported here.
"""

import hmac
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The scoring script is loaded by file path; make its package importable in both layouts.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
if _PACKAGE_ROOT not in sys.path:
    sys.path.insert(0, _PACKAGE_ROOT)

from contoso_recs.serving.contract import (  # noqa: E402
    MAX_BODY_BYTES,
    RequestError,
    parse_request,
)
from contoso_recs.serving.scorer import LiveBundle  # noqa: E402

try:
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse
except ImportError:  # outside the inference server (tests call init/run directly)
    AMLResponse = None

    def rawhttp(func):
        return func


API_KEY_VARIABLE = "CONTOSO_RECS_SERVING_API_KEY"
MODEL_DIR_VARIABLE = "AZUREML_MODEL_DIR"

log = logging.getLogger("contoso_recs.serving")
_live: LiveBundle | None = None
_api_key: bytes | None = None


@dataclass(frozen=True)
class Reply:
    """An answer when no inference server is around: status, JSON body and headers."""

    status: int
    body: dict
    headers: dict = field(default_factory=dict)


def init() -> None:
    """Open the live bundle under AZUREML_MODEL_DIR and read the API key, if one is configured."""
    global _live, _api_key
    model_dir = os.environ.get(MODEL_DIR_VARIABLE)
    if not model_dir:
        raise RuntimeError(f"{MODEL_DIR_VARIABLE} is not set: it must name the serving bundle")
    key = os.environ.get(API_KEY_VARIABLE, "")
    _api_key = key.encode() if key else None
    _live = LiveBundle(model_dir)
    log.info("API key required: %s", "yes" if _api_key else "no")


@rawhttp
def run(request):
    """Answer one request to /score."""
    try:
        if request.method != "POST":
            return _reply(405, {"message": "use POST with a JSON body"}, {"Allow": "POST"})
        if _api_key is not None and not _authorised(request.headers.get("Authorization", "")):
            log.info("answered 401: no valid API key")
            return _reply(
                401, {"message": "a valid API key is required"}, {"WWW-Authenticate": "Bearer"}
            )
        body = request.stream.read(MAX_BODY_BYTES + 1)
        score_request = parse_request(body)
        return _reply(200, _live.scorer().recommend(score_request))
    except RequestError as error:
        log.info("answered %d: %r", error.status, error.message)
        return _reply(error.status, {"message": error.message})
    except Exception as error:  # never a stack trace, nor the request, in the answer
        log.error("scoring failed: %s", type(error).__name__)
        return _reply(500, {"message": "internal error while scoring; see the server log"})


def _authorised(header: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), _api_key)


def _reply(status: int, body: dict, headers: dict | None = None):
    if AMLResponse is None:
        return Reply(status, body, headers or {})
    response = AMLResponse(json.dumps(body), status, headers or {})
    response.mimetype = "application/json"
    return response
