"""Latency of an agent's local API through Triton's own clients, beside a bare HTTP client that
posts a pre-encoded v2 body (the server's share without the client library's), all in one run.

Run by `deploy-bench triton`, which deploys `mlp` (the example MLP, [4, 32] FP32) and `pixels`
(the first pixel of a [1, 224, 224, 3] FP32 image tensor: the transport is all there is):

    python3 tests/python/triton_bench.py --http HOST:PORT --grpc HOST:PORT \
        --mlp-input examples/models/mlp/input.npy --requests 2000

Prints one JSON object: per case, p50 and p99 in microseconds and the requests measured.
"""

import argparse
import http.client
import json
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient


def percentiles(samples):
    ordered = sorted(samples)

    def at(p):
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e6

    return {"p50_us": at(0.5), "p99_us": at(0.99), "requests": len(ordered)}


def timed(call, requests, warmup):
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def bare_client(url, model, body, headers):
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def call():
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"bare client: {answer.status}")

    return call


def cases(args, name, tensor_name, output_name, data):
    http_client = httpclient.InferenceServerClient(url=args.http)
    grpc_client = grpcclient.InferenceServerClient(url=args.grpc)
    shape = list(data.shape)

    def http_call(binary):
        x = httpclient.InferInput(tensor_name, shape, "FP32")
        x.set_data_from_numpy(data, binary_data=binary)
        out = [httpclient.InferRequestedOutput(output_name, binary_data=binary)]
        return lambda: http_client.infer(name, [x], outputs=out).as_numpy(output_name)

    x = grpcclient.InferInput(tensor_name, shape, "FP32")
    x.set_data_from_numpy(data)

    def grpc_call():
        return grpc_client.infer(name, [x]).as_numpy(output_name)

    json_body = json.dumps(
        {"inputs": [{"name": tensor_name, "shape": shape, "datatype": "FP32",
                     "data": data.flatten().tolist()}]}
    ).encode()
    header = json.dumps(
        {"inputs": [{"name": tensor_name, "shape": shape, "datatype": "FP32",
                     "parameters": {"binary_data_size": data.nbytes}}],
         "outputs": [{"name": output_name, "parameters": {"binary_data": True}}]}
    ).encode()
    binary_body = header + data.tobytes()
    requests, warmup = args.requests, max(1, args.requests // 10)
    return {
        f"{name}: bare client, JSON": timed(
            bare_client(args.http, name, json_body, {"Content-Type": "application/json"}),
            requests, warmup),
        f"{name}: bare client, binary": timed(
            bare_client(args.http, name, binary_body,
                        {"Inference-Header-Content-Length": str(len(header)),
                         "Content-Type": "application/octet-stream"}),
            requests, warmup),
        f"{name}: tritonclient HTTP, JSON": timed(http_call(False), requests, warmup),
        f"{name}: tritonclient HTTP, binary": timed(http_call(True), requests, warmup),
        f"{name}: tritonclient gRPC": timed(grpc_call, requests, warmup),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--mlp-input", required=True)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    mlp = np.load(args.mlp_input).astype(np.float32)
    image = np.random.default_rng(7).random((1, 224, 224, 3), dtype=np.float32)
    results = {}
    results.update(cases(args, "mlp", "input", "output", mlp))
    image_args = argparse.Namespace(**vars(args))
    image_args.requests = max(1, args.requests // 10)
    results.update(cases(image_args, "pixels", "image", "pixel", image))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
