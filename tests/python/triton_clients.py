"""Drives an agent's local API with Triton's own clients (tritonclient[http] and
tritonclient[grpc], their defaults) and checks every answer against ONNX Runtime.

Run by the `triton` end-to-end test, which deploys the pipelines `mlp` (the example MLP) and,
when the model fixtures are there, `image` (image-prep then SqueezeNet 1.1):

    python3 tests/python/triton_clients.py --http 127.0.0.1:7480 --grpc 127.0.0.1:7481 \
        --mlp examples/models/mlp [--image-model ../shared/models/squeezenet1_1/model.onnx]

Prints one JSON line: per pipeline, the inference requests that succeeded (`served`) and those
that reached the pipeline (`reached`: the successes, plus the refusals made after the pipeline
ran or by the pipeline itself), which the agent's `tern_pipeline_requests_total` must equal.
"""

import argparse
import http.client
import json
import struct
import sys
import zlib

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SIDE = 224

served = {"mlp": 0, "image": 0}
# Requests that ran in the pipeline, failed or not: what the agent's telemetry counts.
reached = {"mlp": 0, "image": 0}


def succeeded(pipeline):
    served[pipeline] += 1
    reached[pipeline] += 1


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def close(got, want, atol, what):
    check(got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}")
    worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    check(worst <= atol, f"{what}: max abs difference {worst} > {atol}")


def png(rgb):
    """A PNG of an H x W x 3 uint8 array (no filter, one IDAT)."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def expect_error(call, status, what):
    try:
        call()
    except InferenceServerException as e:
        check(status in str(e.status()), f"{what}: status {e.status()}, expected {status}: {e}")
        return str(e)
    raise AssertionError(f"{what}: no error")


def http_suite(url, mlp_input, mlp_want, image):
    client = httpclient.InferenceServerClient(url=url)
    check(client.is_server_live(), "HTTP: server live")
    check(client.is_server_ready(), "HTTP: server ready")
    meta = client.get_server_metadata()
    check("binary_tensor_data" in meta["extensions"], f"HTTP: extensions {meta}")
    check(client.is_model_ready("mlp"), "HTTP: mlp ready")
    check(not client.is_model_ready("no-such-pipeline"), "HTTP: unknown model not ready")
    model = client.get_model_metadata("mlp")
    version = model["versions"][0]
    check(client.is_model_ready("mlp", version), "HTTP: mlp ready at its version")
    check(not client.is_model_ready("mlp", "999"), "HTTP: no version 999")
    check(
        model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}],
        f"HTTP: mlp inputs {model['inputs']}",
    )
    check(
        model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}],
        f"HTTP: mlp outputs {model['outputs']}",
    )
    check(
        client.get_model_metadata("mlp", version)["name"] == "mlp",
        "HTTP: metadata at a version",
    )

    for binary_in in (False, True):
        for binary_out in (False, True):
            x = httpclient.InferInput("input", list(mlp_input.shape), "FP32")
            x.set_data_from_numpy(mlp_input, binary_data=binary_in)
            outputs = [httpclient.InferRequestedOutput("output", binary_data=binary_out)]
            result = client.infer("mlp", [x], outputs=outputs, request_id="r1")
            close(result.as_numpy("output"), mlp_want, 1e-4, f"HTTP mlp in={binary_in} out={binary_out}")
            check(result.get_response()["id"] == "r1", "HTTP: the id comes back")
            succeeded("mlp")
    # No outputs named: all of them, as binary data (the client's default).
    x = httpclient.InferInput("input", list(mlp_input.shape), "FP32")
    x.set_data_from_numpy(mlp_input)
    result = client.infer("mlp", [x], model_version=version)
    close(result.as_numpy("output"), mlp_want, 1e-4, "HTTP mlp defaults")
    succeeded("mlp")

    expect_error(lambda: client.infer("no-such-pipeline", [x]), "404", "HTTP unknown model")
    missing = expect_error(
        lambda: client.infer("mlp", [x], outputs=[httpclient.InferRequestedOutput("logits")]),
        "400",
        "HTTP unknown output",
    )
    check("logits" in missing, f"HTTP: the unknown output is named: {missing}")
    # Outputs are picked from what the pipeline gave: it ran.
    reached["mlp"] += 1

    # A binary tensor whose size does not match its shape: 400 naming the input.
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": [4, 32], "datatype": "FP32",
                     "parameters": {"binary_data_size": 12}}]}
    ).encode()
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(
        "POST",
        "/v2/models/mlp/infer",
        body=header + b"\x00" * 12,
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )
    answer = conn.getresponse()
    text = answer.read().decode()
    check(answer.status == 400 and "input `input`" in text, f"HTTP malformed: {answer.status} {text}")

    if image is not None:
        picture, want = image
        blob = np.array([picture], dtype=np.object_)
        for binary_out in (True, False):
            x = httpclient.InferInput("input", [1], "BYTES")
            x.set_data_from_numpy(blob)
            outputs = [httpclient.InferRequestedOutput("output", binary_data=binary_out)]
            result = client.infer("image", [x], outputs=outputs)
            close(result.as_numpy("output"), want, 1e-3, f"HTTP image out={binary_out}")
            succeeded("image")
        meta = client.get_model_metadata("image")
        check(
            meta["inputs"] == [{"name": "input", "datatype": "BYTES", "shape": [1]}],
            f"HTTP: image inputs {meta['inputs']}",
        )


def grpc_suite(url, mlp_input, mlp_want, image):
    client = grpcclient.InferenceServerClient(url=url)
    check(client.is_server_live(), "gRPC: server live")
    check(client.is_server_ready(), "gRPC: server ready")
    meta = client.get_server_metadata(as_json=True)
    check("binary_tensor_data" in meta["extensions"], f"gRPC: extensions {meta}")
    check(client.is_model_ready("mlp"), "gRPC: mlp ready")
    model = client.get_model_metadata("mlp", as_json=True)
    check(model["inputs"][0]["name"] == "input", f"gRPC: mlp metadata {model}")
    check(model["inputs"][0]["shape"] == ["-1", "32"], f"gRPC: mlp input shape {model}")
    expect_error(lambda: client.is_model_ready("no-such-pipeline"), "NOT_FOUND", "gRPC unknown model ready")

    x = grpcclient.InferInput("input", list(mlp_input.shape), "FP32")
    x.set_data_from_numpy(mlp_input)
    result = client.infer("mlp", [x], request_id="g1")
    close(result.as_numpy("output"), mlp_want, 1e-4, "gRPC mlp")
    check(result.get_response().id == "g1", "gRPC: the id comes back")
    succeeded("mlp")
    result = client.infer("mlp", [x], outputs=[grpcclient.InferRequestedOutput("output")])
    close(result.as_numpy("output"), mlp_want, 1e-4, "gRPC mlp, output named")
    succeeded("mlp")
    expect_error(lambda: client.infer("no-such-pipeline", [x]), "NOT_FOUND", "gRPC unknown model")
    short = grpcclient.InferInput("input", [4, 33], "FP32")
    short.set_data_from_numpy(np.zeros((4, 33), dtype=np.float32))
    expect_error(lambda: client.infer("mlp", [short]), "INVALID_ARGUMENT", "gRPC bad input")
    # The model step refuses it (a bad-input error of the pipeline): it ran.
    reached["mlp"] += 1
    # More than any served pipeline accepts (the MLP's batch is symbolic: the local API's
    # largest body): refused as it arrives, before it is decoded.
    huge = grpcclient.InferInput("input", [(64 << 20) // 128 + 1, 32], "FP32")
    huge.set_data_from_numpy(np.zeros(((64 << 20) // 128 + 1, 32), dtype=np.float32))
    message = expect_error(lambda: client.infer("mlp", [huge]), "RESOURCE_EXHAUSTED", "gRPC huge input")
    check("served pipelines accept" in message, f"gRPC huge input: {message}")
    result = client.infer("mlp", [x])
    close(result.as_numpy("output"), mlp_want, 1e-4, "gRPC mlp after a refusal")
    succeeded("mlp")

    if image is not None:
        picture, want = image
        x = grpcclient.InferInput("input", [1], "BYTES")
        x.set_data_from_numpy(np.array([picture], dtype=np.object_))
        result = client.infer("image", [x])
        close(result.as_numpy("output"), want, 1e-3, "gRPC image")
        succeeded("image")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--mlp", required=True, help="folder with model.onnx and input.npy")
    parser.add_argument("--image-model", help="SqueezeNet-style model behind image-prep")
    args = parser.parse_args()

    mlp_input = np.load(f"{args.mlp}/input.npy").astype(np.float32)
    session = ort.InferenceSession(f"{args.mlp}/model.onnx", providers=["CPUExecutionProvider"])
    mlp_want = session.run(None, {"input": mlp_input})[0]

    image = None
    if args.image_model:
        rgb = np.random.default_rng(7).integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
        # What image-prep gives for an image already of the model's size: no resize, then
        # (x / 255 - mean) / std, channels first.
        prepared = ((rgb.astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]
        session = ort.InferenceSession(args.image_model, providers=["CPUExecutionProvider"])
        image = (png(rgb), session.run(None, {"input": prepared.astype(np.float32)})[0])

    http_suite(args.http, mlp_input, mlp_want, image)
    grpc_suite(args.grpc, mlp_input, mlp_want, image)
    print(json.dumps({"served": served, "reached": reached}))


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
