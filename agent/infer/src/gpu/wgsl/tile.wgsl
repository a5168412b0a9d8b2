// Tiling: out[c] = in[c mod in_shape]. p: [n, rank, _, _, out_shape[8], in_shape[8], in_strides[8]]
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let rank = p[1];
    var rem = i;
    var si = 0u;
    for (var d = 0u; d < rank; d++) {
        let axis = rank - 1u - d;
        let extent = p[4u + axis];
        let c = rem % extent;
        rem = rem / extent;
        si += (c % p[12u + axis]) * p[20u + axis];
    }
    dst[i] = src[si];
}
