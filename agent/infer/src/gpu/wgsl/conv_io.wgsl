// Convolution as an implicit GEMM over NCHW: per group g (the workgroup's z), M = output
// channels of the group, N = batch * OH * OW, K = Cin_g * KH * KW. A is the OIHW kernel, B is
// gathered from the input on the fly (no im2col buffer).
// p[16..]: Cin, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, Cin_g, Cout_g, Cout
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
    let ci = k / (KH * KW);
    let r = k % (KH * KW);
    let kh = r / KW;
    let kw = r % KW;
    let OH = p[19];
    let OW = p[20];
    let ow = n % OW;
    let oh = (n / OW) % OH;
    let bn = n / (OW * OH);
    let ih = i32(oh * p[23] + kh * p[27]) - i32(p[25]);
    let iw = i32(ow * p[24] + kw * p[28]) - i32(p[26]);
    let H = p[17];
    let W = p[18];
    if (ih < 0 || ih >= i32(H) || iw < 0 || iw >= i32(W)) {
        return 0.0;
    }
    return bitcast<f32>(x[((bn * p[16] + g * p[29] + ci) * H + u32(ih)) * W + u32(iw)]);
}

fn store_c(g: u32, m: u32, n: u32, v: f32) {
    let OH = p[19];
    let OW = p[20];
    let s = n % (OH * OW);
    let bn = n / (OH * OW);
    y[(bn * p[31] + g * p[30] + m) * OH * OW + s] = bitcast<u32>(v);
}
