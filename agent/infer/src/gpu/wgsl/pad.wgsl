// Reflect or edge padding. p: [n, rank, mode (0 reflect, 1 edge), _, out_shape[8], in_shape[8],
// before[8], in_strides[8]]
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
        let len = i32(p[12u + axis]);
        var c = i32(rem % extent) - i32(p[20u + axis]);
        rem = rem / extent;
        if (p[2] == 0u) {
            // reflect (without repeating the edge); periodic for pads wider than the axis
            let period = max(2 * (len - 1), 1);
            c = abs(c) % period;
            if (c >= len) {
                c = period - c;
            }
        } else {
            c = clamp(c, 0, len - 1);
        }
        si += u32(c) * p[28u + axis];
    }
    dst[i] = src[si];
}
