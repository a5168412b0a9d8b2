// Conversions between the GPU's word types. p: [n, mode]
// modes: 0 f32->i32, 1 i32->f32, 2 f32->bool, 3 i32->bool, 4 bool->f32, 5 bool->i32
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
        default: { y[i] = v; }
    }
}
