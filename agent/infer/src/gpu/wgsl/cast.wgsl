// Conversions between the GPU's word types. p: [n, mode]
// modes: 0 f32->i32, 1 i32->f32, 2 f32->bool, 3 i32->bool, 4 bool->f32, 5 bool->i32,
//        6 i32->u8, 7 i32->i8, 8 i32->u16, 9 i32->i16 (wrapping), 10 f32->f16 (rounded, kept in f32)
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let v = x[i];
    switch p[1] {
        case 0u: { y[i] = bitcast<u32>(i32(trunc(bitcast<f32>(v)))); }
        case 1u: { y[i] = bitcast<u32>(f32(bitcast<i32>(v))); }
        case 2u: { y[i] = u32(bitcast<f32>(v) != 0.0); }
        case 3u: { y[i] = u32(v != 0u); }
        case 4u: { y[i] = bitcast<u32>(f32(v)); }
        case 6u: { y[i] = v & 255u; }
        case 7u: { y[i] = bitcast<u32>((bitcast<i32>(v) << 24u) >> 24u); }
        case 8u: { y[i] = v & 65535u; }
        case 9u: { y[i] = bitcast<u32>((bitcast<i32>(v) << 16u) >> 16u); }
        case 10u: { y[i] = bitcast<u32>(quantizeToF16(bitcast<f32>(v))); }
        default: { y[i] = v; }
    }
}
