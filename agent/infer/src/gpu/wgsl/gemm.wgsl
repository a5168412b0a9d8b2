// Tiled GEMM: C[batch, m, n] = epilogue(sum_k A[batch, m, k] * B[batch, k, n]).
// 16x16 invocations per workgroup, each computing TM x TN outputs of a (16*TM) x (16*TN) tile;
// K advances BK at a time through workgroup memory. The operand loaders and the store come from
// the source appended to this one (matmul or implicit-GEMM convolution), which is how one kernel
// serves both. TM and TN are substituted before compilation.
//
// p: [M, N, K, has_bias, bias_on_m, lo, hi, act, act_a, act_b, bias_batch_stride, clamps, _, _, _, _,
//     loader params...]

const TM: u32 = __TM__u;
const TN: u32 = __TN__u;
const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
const BK: u32 = 8u;

var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

fn epilogue(v: f32, batch: u32, m: u32, n: u32) -> f32 {
    var r = v;
    if (p[3] == 1u) {
        r += bitcast<f32>(bias[batch * p[10] + select(n, m, p[4] == 1u)]);
    }
    if (p[11] == 1u) {
        r = clamp(r, pf(5u), pf(6u));
    }
    return unary(r, p[7], pf(8u), pf(9u));
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let M = p[0];
    let N = p[1];
    let K = p[2];
    let batch = wid.z;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tid = lid.y * 16u + lid.x;
    var acc: array<f32, 64>;
    for (var i = 0u; i < TM * TN; i++) {
        acc[i] = 0.0;
    }
    var a_frag: array<f32, 8>;
    var b_frag: array<f32, 8>;
    for (var k0 = 0u; k0 < K; k0 += BK) {
        for (var i = 0u; i < TM / 2u; i++) {
            let e = tid + i * 256u;
            let mm = e / BK;
            let kk = e % BK;
            var v = 0.0;
            if (m0 + mm < M && k0 + kk < K) {
                v = load_a(batch, m0 + mm, k0 + kk);
            }
            tile_a[kk * BM + mm] = v;
        }
        for (var i = 0u; i < TN / 2u; i++) {
            let e = tid + i * 256u;
            let kk = e / BN;
            let nn = e % BN;
            var v = 0.0;
            if (n0 + nn < N && k0 + kk < K) {
                v = load_b(batch, k0 + kk, n0 + nn);
            }
            tile_b[kk * BN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < TM; i++) {
                a_frag[i] = tile_a[kk * BM + lid.y + i * 16u];
            }
            for (var j = 0u; j < TN; j++) {
                b_frag[j] = tile_b[kk * BN + lid.x + j * 16u];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(a_frag[i], b_frag[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + lid.y + i * 16u;
        if (m >= M) {
            continue;
        }
        for (var j = 0u; j < TN; j++) {
            let n = n0 + lid.x + j * 16u;
            if (n < N) {
                store_c(batch, m, n, epilogue(acc[i * TN + j], batch, m, n));
            }
        }
    }
}
