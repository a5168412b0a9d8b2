"""ONNX Runtime on one thread, the reference beside our backends: prints median and p90 ms.

usage: ort_reference.py MODEL.onnx INPUT.npy RUNS BATCH
"""
import sys
import time

import numpy as np
import onnxruntime as ort

model, input_path, runs, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
x = np.load(input_path)
x = np.concatenate([x] * (batch // x.shape[0] + 1))[:batch]
feed = {session.get_inputs()[0].name: x}
for _ in range(3):
    session.run(None, feed)
samples = []
for _ in range(runs):
    start = time.perf_counter()
    session.run(None, feed)
    samples.append((time.perf_counter() - start) * 1e3)
samples.sort()
print(f"{samples[len(samples) // 2]:.3f} {samples[len(samples) * 9 // 10]:.3f}")
