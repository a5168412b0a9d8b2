"""PyTorch references for the GPU figures, on the GPU host: CUDA, fp32 with TF32 off, eager,
cuDNN autotuning on. Prints markdown rows like the `models` bench.

usage: torch_reference.py [--export-resnet50 DIR]
  --export-resnet50 DIR   also write DIR/model.onnx (opset 17, symbolic batch) and DIR/input.npy
                          for `cargo bench --bench models -- --models DIR --batch 32 --gpu`
"""
import os
import sys
import time

import numpy as np
import torch
import torchvision

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True


def median_ms(fn, runs=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    return samples[len(samples) // 2]


def main():
    if "--export-resnet50" in sys.argv:
        out = sys.argv[sys.argv.index("--export-resnet50") + 1]
        os.makedirs(out, exist_ok=True)
        model = torchvision.models.resnet50().eval()
        x = torch.randn(1, 3, 224, 224)
        torch.onnx.export(model, x, os.path.join(out, "model.onnx"), opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        np.save(os.path.join(out, "input.npy"), x.numpy())

    print("| reference | median ms | rate |")
    print("| --- | --- | --- |")
    n = 4096
    a = torch.randn(n, n, device="cuda")
    b = torch.randn(n, n, device="cuda")
    t = median_ms(lambda: a @ b, runs=20)
    print(f"| torch f32 matmul {n}³ (TF32 off) | {t:.3f} | {2 * n ** 3 / t / 1e9:.2f} TFLOP/s |")
    with torch.no_grad():
        for name, batch in [("mobilenet_v2", 1), ("resnet50", 32)]:
            model = getattr(torchvision.models, name)().cuda().eval()
            x = torch.randn(batch, 3, 224, 224, device="cuda")
            t = median_ms(lambda: model(x))
            print(f"| torch eager {name} batch {batch} | {t:.3f} | |")


if __name__ == "__main__":
    main()
