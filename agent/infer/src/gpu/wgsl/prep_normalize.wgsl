// (x * scale - mean[c]) / std[c] into f32, with a layout change.
// p: [n, element (0 f32, 1 u8), in_layout, out_layout, N, C, H, W, scale]; stats: mean[C], 1/std[C]
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let C = p[5]; let H = p[6]; let W = p[7];
    var c: u32; var y: u32; var x: u32; var n: u32;
    if (p[3] == 1u) {
        c = i % C; x = (i / C) % W; y = (i / (C * W)) % H; n = i / (C * W * H);
    } else {
        x = i % W; y = (i / W) % H; c = (i / (W * H)) % C; n = i / (W * H * C);
    }
    var e: u32;
    if (p[2] == 1u) {
        e = ((n * H + y) * W + x) * C + c;
    } else {
        e = ((n * C + c) * H + y) * W + x;
    }
    var v: f32;
    if (p[1] == 1u) {
        v = f32((src[e / 4u] >> (8u * (e % 4u))) & 255u);
    } else {
        v = bitcast<f32>(src[e]);
    }
    dst[i] = bitcast<u32>((v * pf(8u) - stats[c]) * stats[C + c]);
}
