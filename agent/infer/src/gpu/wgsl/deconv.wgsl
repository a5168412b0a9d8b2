// Transposed convolution, one invocation per output element, NCHW; the kernel is laid out
// [Cout][Cin_g][KH][KW] (tract regroups ONNX's [Cin][Cout_g][KH][KW]).
// y[n, co, oy, ox] = bias[co] + sum x[n, g·Cin_g + ci, iy, ix] · w[co, ci, kh, kw]
// where oy = iy·SH + kh·DH − PH (and likewise for x).
// p: [n_out, _, _, _, Cin, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, Cin_g, Cout_g, Cout]
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
    let Cin = p[4]; let H = p[5]; let W = p[6]; let OH = p[7]; let OW = p[8];
    let KH = p[9]; let KW = p[10]; let SH = i32(p[11]); let SW = i32(p[12]);
    let Cin_g = p[17]; let Cout_g = p[18]; let Cout = p[19];
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let co = (i / (OW * OH)) % Cout;
    let bn = i / (OW * OH * Cout);
    let g = co / Cout_g;
    var acc = bitcast<f32>(bias[co]);
    for (var kh = 0u; kh < KH; kh++) {
        let ty = i32(oy) + i32(p[13]) - i32(kh * p[15]);
        if (ty < 0 || ty % SH != 0 || ty / SH >= i32(H)) {
            continue;
        }
        let iy = u32(ty / SH);
        for (var kw = 0u; kw < KW; kw++) {
            let tx = i32(ox) + i32(p[14]) - i32(kw * p[16]);
            if (tx < 0 || tx % SW != 0 || tx / SW >= i32(W)) {
                continue;
            }
            let ix = u32(tx / SW);
            for (var ci = 0u; ci < Cin_g; ci++) {
                let xv = bitcast<f32>(x[((bn * Cin + g * Cin_g + ci) * H + iy) * W + ix]);
                let wv = bitcast<f32>(w[((co * Cin_g + ci) * KH + kh) * KW + kw]);
                acc = fma(xv, wv, acc);
            }
        }
    }
    y[i] = bitcast<u32>(acc);
}
