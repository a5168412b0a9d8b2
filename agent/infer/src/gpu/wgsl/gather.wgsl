// Gather along an axis: out[o, j, r] = data[o, indices[j], r]. p: [n, inner, n_indices, axis_len]
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let inner = p[1];
    let n_idx = p[2];
    let axis_len = p[3];
    let r = i % inner;
    let j = (i / inner) % n_idx;
    let o = i / (inner * n_idx);
    var idx = bitcast<i32>(indices[j]);
    if (idx < 0) {
        idx += i32(axis_len);
    }
    if (idx < 0 || u32(idx) >= axis_len) {
        out[i] = 0u;
        return;
    }
    out[i] = data[(o * axis_len + u32(idx)) * inner + r];
}
