// Operands of a batched matmul through strides (0 on broadcast axes); batch index split over 4
// axes. p[16..]: batch_shape[4], a_batch[4], b_batch[4], c_batch[4], a_sm, a_sk, b_sk, b_sn,
// c_sm, c_sn, a_off, b_off
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<u32>;
@group(0) @binding(4) var<storage, read_write> c: array<u32>;

fn batch_offset(batch: u32, strides: u32) -> u32 {
    var rem = batch;
    var off = 0u;
    for (var d = 0u; d < 4u; d++) {
        let axis = 3u - d;
        let extent = p[16u + axis];
        off += (rem % extent) * p[strides + axis];
        rem = rem / extent;
    }
    return off;
}

fn load_a(batch: u32, m: u32, k: u32) -> f32 {
    return bitcast<f32>(a[p[42] + batch_offset(batch, 20u) + m * p[32] + k * p[33]]);
}

fn load_b(batch: u32, k: u32, n: u32) -> f32 {
    return bitcast<f32>(b[p[43] + batch_offset(batch, 24u) + k * p[34] + n * p[35]]);
}

fn store_c(batch: u32, m: u32, n: u32, v: f32) {
    c[batch_offset(batch, 28u) + m * p[36] + n * p[37]] = bitcast<u32>(v);
}
