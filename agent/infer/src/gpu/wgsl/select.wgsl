// out = cond ? a : b, with broadcasting through strides.
// p: [n, rank, _, _, shape[8], cond_strides[8], a_strides[8], b_strides[8]]
@group(0) @binding(1) var<storage, read> cond: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let rank = p[1];
    var rem = i;
    var ci = 0u;
    var ai = 0u;
    var bi = 0u;
    for (var d = 0u; d < rank; d++) {
        let axis = rank - 1u - d;
        let extent = p[4u + axis];
        let c = rem % extent;
        rem = rem / extent;
        ci += c * p[12u + axis];
        ai += c * p[20u + axis];
        bi += c * p[28u + axis];
    }
    out[i] = select(b[bi], a[ai], cond[ci] != 0u);
}
