// Reduction over some axes, one invocation per output element (short rows); reduced axes stay
// with extent 1 in the output. Parameters and ops: reduce_common.wgsl.
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let count = p[4];
    let op = p[1];
    let base = row_base(i);
    var mx = -3.4028235e38;
    if (op == 9u) {
        for (var r = 0u; r < count; r++) {
            mx = max(mx, bitcast<f32>(x[reduced_element(base, r)]));
        }
    }
    var acc = start_value(op);
    for (var r = 0u; r < count; r++) {
        acc = combine(op, acc, term(op, bitcast<f32>(x[reduced_element(base, r)]), mx));
    }
    y[i] = bitcast<u32>(finish(op, acc, count, mx));
}
