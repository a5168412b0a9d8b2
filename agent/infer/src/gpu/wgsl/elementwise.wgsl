// y = unary(x), contiguous. p: [n, code, a, b]
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    y[i] = bitcast<u32>(unary(bitcast<f32>(x[i]), p[1], pf(2u), pf(3u)));
}
