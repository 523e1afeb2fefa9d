"""The ECR stub as a process that starts already configured (no window of normal answers).

    python -m bench.stub_process --port 9000 --config '{"always": "hang"}'

`python -m tests.support.ecr_stub` answers normally until it is told otherwise over
HTTP; a restart in the middle of an outage must not answer even one call first.
"""

import argparse
import json

from tests.support import ecr_stub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--config", default="{}", help="StubConfig fields, as JSON")
    arguments = parser.parse_args()
    stub = ecr_stub.EcrStub(host="127.0.0.1", port=arguments.port)
    stub.configure(latency_ms=arguments.latency_ms, synthesize=True, **json.loads(arguments.config))
    print(stub.url, flush=True)
    try:
        stub._server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        stub._server.server_close()


if __name__ == "__main__":
    main()
