"""The floor of the serving load test: a scoring script that does no scoring.

It parses the request body and answers a fixed list of 10 recommendations of the same size as a
real answer, on the same inference server, so the load test can tell the server's own cost from
the product's.
"""

import json

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

ANSWER = json.dumps(
    {
        "recommendations": [
            {"product_id": str(100000 + i), "score": 0.5, "reason": "customer_and_viewed_product"}
            for i in range(10)
        ],
        "model_version": "floor",
        "fallback": None,
    }
)


def init() -> None:
    pass


@rawhttp
def run(request):
    json.loads(request.stream.read(8193) or b"{}")
    response = AMLResponse(ANSWER, 200)
    response.mimetype = "application/json"
    return response
