// What the reduction kernels share (reduce.wgsl, reduce_rows.wgsl; softmax_rows.wgsl uses the
// ops): the layout of their parameters, the ops and where a row's elements are.
// p: [n_out, op, rank, red_rank, count, _, _, _, out_shape[8], in_strides[8], red_shape[8], red_strides[8]]
// ops: 0 sum, 1 mean, 2 max, 3 min, 4 prod, 5 mean of squares, 6 sum of squares, 7 l1, 8 l2,
//      9 log-sum-exp

fn start_value(op: u32) -> f32 {
    switch op {
        case 2u: { return -3.4028235e38; }
        case 3u: { return 3.4028235e38; }
        case 4u: { return 1.0; }
        default: { return 0.0; }
    }
}

fn combine(op: u32, a: f32, b: f32) -> f32 {
    switch op {
        case 2u: { return max(a, b); }
        case 3u: { return min(a, b); }
        case 4u: { return a * b; }
        default: { return a + b; }
    }
}

// What one element adds (log-sum-exp takes it against the row's maximum `mx`).
fn term(op: u32, v: f32, mx: f32) -> f32 {
    switch op {
        case 5u, 6u, 8u: { return v * v; }
        case 7u: { return abs(v); }
        case 9u: { return exp(v - mx); }
        default: { return v; }
    }
}

// The row's result from what was folded over its `count` elements.
fn finish(op: u32, acc: f32, count: u32, mx: f32) -> f32 {
    switch op {
        case 1u, 5u: { return acc / f32(max(count, 1u)); }
        case 8u: { return sqrt(acc); }
        case 9u: { return log(acc) + mx; }
        default: { return acc; }
    }
}

// Where output element `i`'s reduced elements start in the input.
fn row_base(i: u32) -> u32 {
    let rank = p[2];
    var rem = i;
    var base = 0u;
    for (var d = 0u; d < rank; d++) {
        let axis = rank - 1u - d;
        let extent = p[8u + axis];
        base += (rem % extent) * p[16u + axis];
        rem = rem / extent;
    }
    return base;
}

// The offset of the r-th reduced element of the row at `base`.
fn reduced_element(base: u32, r: u32) -> u32 {
    let red_rank = p[3];
    var rr = r;
    var off = base;
    for (var d = 0u; d < red_rank; d++) {
        let axis = red_rank - 1u - d;
        let extent = p[24u + axis];
        off += (rr % extent) * p[32u + axis];
        rr = rr / extent;
    }
    return off;
}
