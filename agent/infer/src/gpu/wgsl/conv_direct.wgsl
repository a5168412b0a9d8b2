// Direct convolution, one invocation per output element: depthwise and other grouped
// convolutions with few channels per group. NCHW, OIHW kernel.
// p: [n_out, has_bias, lo, hi, act, act_a, act_b, clamps, Cin, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
//     DH, DW, Cin_g, Cout_g, Cout, D, OD, KD, SD, PD, DDil] (2-D: D = OD = KD = 1)
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let Cin = p[8]; let H = p[9]; let W = p[10]; let OH = p[11]; let OW = p[12];
    let KH = p[13]; let KW = p[14];
    let Cin_g = p[21]; let Cout_g = p[22]; let Cout = p[23];
    let D = p[24]; let OD = p[25]; let KD = p[26];
    let ow = i % OW;
    let oh = (i / OW) % OH;
    let od = (i / (OW * OH)) % OD;
    let co = (i / (OW * OH * OD)) % Cout;
    let bn = i / (OW * OH * OD * Cout);
    let g = co / Cout_g;
    var acc = 0.0;
    for (var ci = 0u; ci < Cin_g; ci++) {
        let volume = (bn * Cin + g * Cin_g + ci) * D;
        for (var kd = 0u; kd < KD; kd++) {
            let id = i32(od * p[27] + kd * p[29]) - i32(p[28]);
            if (id < 0 || id >= i32(D)) {
                continue;
            }
            let wbase = ((co * Cin_g + ci) * KD + kd) * KH;
            for (var kh = 0u; kh < KH; kh++) {
                let ih = i32(oh * p[15] + kh * p[19]) - i32(p[17]);
                if (ih < 0 || ih >= i32(H)) {
                    continue;
                }
                for (var kw = 0u; kw < KW; kw++) {
                    let iw = i32(ow * p[16] + kw * p[20]) - i32(p[18]);
                    if (iw >= 0 && iw < i32(W)) {
                        acc = fma(bitcast<f32>(x[((volume + u32(id)) * H + u32(ih)) * W + u32(iw)]),
                                  bitcast<f32>(w[(wbase + kh) * KW + kw]), acc);
                    }
                }
            }
        }
    }
    if (p[1] == 1u) {
        acc += bitcast<f32>(bias[co]);
    }
    if (p[7] == 1u) {
        acc = clamp(acc, pf(2u), pf(3u));
    }
    y[i] = bitcast<u32>(unary(acc, p[4], pf(5u), pf(6u)));
}
