// Reduction over some axes; reduced axes stay with extent 1 in the output.
// p: [n_out, op, rank, red_rank, count, _, _, _, out_shape[8], in_strides[8], red_shape[8], red_strides[8]]
// ops: 0 sum, 1 mean, 2 max, 3 min, 4 prod, 5 mean of squares, 6 sum of squares, 7 l1, 8 l2,
//      9 log-sum-exp
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let rank = p[2];
    let red_rank = p[3];
    let count = p[4];
    let op = p[1];
    var rem = i;
    var base = 0u;
    for (var d = 0u; d < rank; d++) {
        let axis = rank - 1u - d;
        let extent = p[8u + axis];
        let c = rem % extent;
        rem = rem / extent;
        base += c * p[16u + axis];
    }
    var acc = 0.0;
    if (op == 2u) { acc = -3.4028235e38; }
    if (op == 3u) { acc = 3.4028235e38; }
    if (op == 4u) { acc = 1.0; }
    var mx = -3.4028235e38;
    if (op == 9u) {
        for (var r = 0u; r < count; r++) {
            var rr = r;
            var off = base;
            for (var d = 0u; d < red_rank; d++) {
                let axis = red_rank - 1u - d;
                let extent = p[24u + axis];
                off += (rr % extent) * p[32u + axis];
                rr = rr / extent;
            }
            mx = max(mx, bitcast<f32>(x[off]));
        }
    }
    for (var r = 0u; r < count; r++) {
        var rr = r;
        var off = base;
        for (var d = 0u; d < red_rank; d++) {
            let axis = red_rank - 1u - d;
            let extent = p[24u + axis];
            off += (rr % extent) * p[32u + axis];
            rr = rr / extent;
        }
        let v = bitcast<f32>(x[off]);
        switch op {
            case 2u: { acc = max(acc, v); }
            case 3u: { acc = min(acc, v); }
            case 4u: { acc = acc * v; }
            case 5u, 6u, 8u: { acc += v * v; }
            case 7u: { acc += abs(v); }
            case 9u: { acc += exp(v - mx); }
            default: { acc += v; }
        }
    }
    if (op == 1u || op == 5u) { acc = acc / f32(count); }
    if (op == 8u) { acc = sqrt(acc); }
    if (op == 9u) { acc = log(acc) + mx; }
    y[i] = bitcast<u32>(acc);
}
