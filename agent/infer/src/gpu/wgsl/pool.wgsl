// Max, average or sum pooling over N·C volumes of D×H×W (2-D pools have D = 1, 1-D ones H = 1 too).
// p: [n_out, kind, count_include_pad, _, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
//     D, OD, KD, SD, PD, DD]
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let H = p[4]; let W = p[5]; let OH = p[6]; let OW = p[7];
    let KH = p[8]; let KW = p[9];
    let D = p[16]; let OD = p[17]; let KD = p[18];
    let ow = i % OW;
    let oh = (i / OW) % OH;
    let od = (i / (OW * OH)) % OD;
    let plane = i / (OW * OH * OD);
    let base = plane * D * H * W;
    var acc = 0.0;
    if (p[1] == 0u) { acc = -3.4028235e38; }
    var count = 0u;
    for (var kd = 0u; kd < KD; kd++) {
        let id = i32(od * p[19] + kd * p[21]) - i32(p[20]);
        if (id < 0 || id >= i32(D)) {
            continue;
        }
        for (var kh = 0u; kh < KH; kh++) {
            let ih = i32(oh * p[10] + kh * p[14]) - i32(p[12]);
            for (var kw = 0u; kw < KW; kw++) {
                let iw = i32(ow * p[11] + kw * p[15]) - i32(p[13]);
                if (ih >= 0 && ih < i32(H) && iw >= 0 && iw < i32(W)) {
                    let v = bitcast<f32>(x[base + (u32(id) * H + u32(ih)) * W + u32(iw)]);
                    if (p[1] == 0u) { acc = max(acc, v); } else { acc += v; }
                    count += 1u;
                }
            }
        }
    }
    if (p[1] == 1u) {
        var d = count;
        if (p[2] == 1u) { d = KD * KH * KW; }
        acc = acc / f32(max(d, 1u));
    }
    y[i] = bitcast<u32>(acc);
}
