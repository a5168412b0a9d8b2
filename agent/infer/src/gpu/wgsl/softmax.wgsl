// Softmax (or log-softmax) along one axis. p: [rows, axis_len, inner, log]
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = linear_id(gid, nwg);
    if (r >= p[0]) {
        return;
    }
    let len = p[1];
    let inner = p[2];
    let base = (r / inner) * len * inner + r % inner;
    var mx = -3.4028235e38;
    for (var j = 0u; j < len; j++) {
        mx = max(mx, bitcast<f32>(x[base + j * inner]));
    }
    var sum = 0.0;
    for (var j = 0u; j < len; j++) {
        sum += exp(bitcast<f32>(x[base + j * inner]) - mx);
    }
    let log_sum = log(sum);
    for (var j = 0u; j < len; j++) {
        let v = bitcast<f32>(x[base + j * inner]) - mx;
        if (p[3] == 1u) {
            y[base + j * inner] = bitcast<u32>(v - log_sum);
        } else {
            y[base + j * inner] = bitcast<u32>(exp(v) / sum);
        }
    }
}
