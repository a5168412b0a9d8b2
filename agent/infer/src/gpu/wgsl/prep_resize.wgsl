// Bilinear resize (half-pixel centres, clamped at the edges) of uint8 or f32 images, NCHW or
// NHWC; the arithmetic follows tern-accel-cpu step for step. uint8 images are packed four to a
// word, and each invocation writes one whole word.
// p: [n_out, element (0 f32, 1 u8), layout (0 nchw, 1 nhwc), N, C, H, W, OH, OW, scale_y, scale_x]
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

fn index(nhwc: bool, n: u32, c: u32, y: u32, x: u32, C: u32, H: u32, W: u32) -> u32 {
    if (nhwc) {
        return ((n * H + y) * W + x) * C + c;
    }
    return ((n * C + c) * H + y) * W + x;
}

fn load(e: u32) -> f32 {
    if (p[1] == 1u) {
        return f32((src[e / 4u] >> (8u * (e % 4u))) & 255u);
    }
    return bitcast<f32>(src[e]);
}

fn sample(e: u32) -> f32 {
    let nhwc = p[2] == 1u;
    let C = p[4]; let H = p[5]; let W = p[6]; let OH = p[7]; let OW = p[8];
    var c: u32; var oy: u32; var ox: u32; var n: u32;
    if (nhwc) {
        c = e % C; ox = (e / C) % OW; oy = (e / (C * OW)) % OH; n = e / (C * OW * OH);
    } else {
        ox = e % OW; oy = (e / OW) % OH; c = (e / (OW * OH)) % C; n = e / (OW * OH * C);
    }
    let sy = clamp((f32(oy) + 0.5) * pf(9u) - 0.5, 0.0, f32(H - 1u));
    let sx = clamp((f32(ox) + 0.5) * pf(10u) - 0.5, 0.0, f32(W - 1u));
    let y0 = u32(floor(sy)); let y1 = min(y0 + 1u, H - 1u); let fy = sy - f32(y0);
    let x0 = u32(floor(sx)); let x1 = min(x0 + 1u, W - 1u); let fx = sx - f32(x0);
    let p00 = load(index(nhwc, n, c, y0, x0, C, H, W));
    let p01 = load(index(nhwc, n, c, y0, x1, C, H, W));
    let p10 = load(index(nhwc, n, c, y1, x0, C, H, W));
    let p11 = load(index(nhwc, n, c, y1, x1, C, H, W));
    let top = p00 + (p01 - p00) * fx;
    let bottom = p10 + (p11 - p10) * fx;
    return top + (bottom - top) * fy;
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    let n = p[0];
    if (p[1] == 0u) {
        if (i < n) {
            dst[i] = bitcast<u32>(sample(i));
        }
        return;
    }
    if (i * 4u >= n) {
        return;
    }
    var word = 0u;
    for (var k = 0u; k < 4u; k++) {
        let e = i * 4u + k;
        if (e < n) {
            let v = u32(clamp(floor(sample(e) + 0.5), 0.0, 255.0));
            word = word | (v << (8u * k));
        }
    }
    dst[i] = word;
}
