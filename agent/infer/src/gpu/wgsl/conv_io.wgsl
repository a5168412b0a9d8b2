// Convolution as an implicit GEMM over NC(D)HW: per group g (the workgroup's z), M = output
// channels of the group, N = batch * OD * OH * OW, K = Cin_g * KD * KH * KW. A is the OI(D)HW
// kernel, B is gathered from the input on the fly (no im2col buffer). 2-D: D = OD = KD = 1.
// p[16..]: Cin, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, Cin_g, Cout_g, Cout,
//          D, OD, KD, SD, PD, DDil
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<u32>;

fn load_a(g: u32, m: u32, k: u32) -> f32 {
    return bitcast<f32>(w[(g * p[30] + m) * p[2] + k]);
}

fn load_b(g: u32, k: u32, n: u32) -> f32 {
    let KH = p[21];
    let KW = p[22];
    let KD = p[34];
    let ci = k / (KD * KH * KW);
    let r = k % (KD * KH * KW);
    let kd = r / (KH * KW);
    let kh = (r / KW) % KH;
    let kw = r % KW;
    let OH = p[19];
    let OW = p[20];
    let OD = p[33];
    let ow = n % OW;
    let oh = (n / OW) % OH;
    let od = (n / (OW * OH)) % OD;
    let bn = n / (OW * OH * OD);
    let id = i32(od * p[35] + kd * p[37]) - i32(p[36]);
    let ih = i32(oh * p[23] + kh * p[27]) - i32(p[25]);
    let iw = i32(ow * p[24] + kw * p[28]) - i32(p[26]);
    let H = p[17];
    let W = p[18];
    let D = p[32];
    if (id < 0 || id >= i32(D) || ih < 0 || ih >= i32(H) || iw < 0 || iw >= i32(W)) {
        return 0.0;
    }
    return bitcast<f32>(x[(((bn * p[16] + g * p[29] + ci) * D + u32(id)) * H + u32(ih)) * W + u32(iw)]);
}

fn store_c(g: u32, m: u32, n: u32, v: f32) {
    let spatial = p[33] * p[19] * p[20];
    let s = n % spatial;
    let bn = n / spatial;
    y[(bn * p[31] + g * p[30] + m) * spatial + s] = bitcast<u32>(v);
}
