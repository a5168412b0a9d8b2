// Strided copy of 32-bit words: transposes, slices, concatenation, broadcasts, constant-padding
// interiors, downsampling, tiling, and reflect or edge padding. Each output coordinate maps to a
// source coordinate per axis: as is (0), modulo the source extent (1: tiling), or shifted by the
// padding before it and reflected (2) or clamped (3) into the source.
// p: [n, rank, src_offset, dst_offset, shape[8], src_strides[8], dst_strides[8], map, _, _, _,
//     src_shape[8], before[8]]
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn source_coord(c: u32, axis: u32) -> u32 {
    let len = i32(p[32u + axis]);
    let shifted = i32(c) - i32(p[40u + axis]);
    switch p[28] {
        case 1u: { return c % p[32u + axis]; }
        case 2u: {
            // reflect without repeating the edge; periodic for pads wider than the axis
            let period = max(2 * (len - 1), 1);
            var r = abs(shifted) % period;
            if (r >= len) {
                r = period - r;
            }
            return u32(r);
        }
        case 3u: { return u32(clamp(shifted, 0, len - 1)); }
        default: { return c; }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let rank = p[1];
    var rem = i;
    var si = p[2];
    var di = p[3];
    for (var d = 0u; d < rank; d++) {
        let axis = rank - 1u - d;
        let extent = p[4u + axis];
        let c = rem % extent;
        rem = rem / extent;
        si += source_coord(c, axis) * p[12u + axis];
        di += c * p[20u + axis];
    }
    dst[di] = src[si];
}
