"""The floor: the least an aiohttp TLS server can do to answer an AdmissionReview.

It reads and parses the body (as any webhook must) and answers `allowed: true`
with the request's uid. Same aiohttp, same TLS settings, same CPU as the webhook:
the ratio of the webhook's latency to this one's is digestguard's own cost.

    python -m bench.floor --port 9443 --cert tls.crt --key tls.key
"""

import argparse
import json
import ssl

import aiohttp.web


async def answer(request: aiohttp.web.Request) -> aiohttp.web.Response:
    try:
        uid = json.loads(await request.read())["request"]["uid"]
    except (ValueError, KeyError, TypeError):
        uid = ""
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": True},
    }
    return aiohttp.web.Response(body=json.dumps(review).encode(), content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    arguments = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(arguments.cert, arguments.key)
    app = aiohttp.web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("POST", "/{path:.*}", answer)
    aiohttp.web.run_app(
        app,
        host=arguments.address,
        port=arguments.port,
        ssl_context=context,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
