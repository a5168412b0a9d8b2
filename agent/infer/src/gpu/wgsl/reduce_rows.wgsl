// Reduction over some axes with one 256-wide workgroup per output element: each invocation
// folds a strided share of the reduced elements, then the workgroup combines the 256 partial
// results in a tree. For long reductions (the lowering picks it from 64 elements on), so that
// no single invocation walks a whole row. Same parameters and ops as reduce.wgsl.
// p: [n_out, op, rank, red_rank, count, _, _, _, out_shape[8], in_strides[8], red_shape[8], red_strides[8]]
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

var<workgroup> partial: array<f32, 256>;

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

fn term(op: u32, v: f32, mx: f32) -> f32 {
    switch op {
        case 5u, 6u, 8u: { return v * v; }
        case 7u: { return abs(v); }
        case 9u: { return exp(v - mx); }
        default: { return v; }
    }
}

// The offset of the r-th reduced element from the row's base.
fn element(base: u32, r: u32) -> u32 {
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

// Folds `count` elements of the row at `base` with `op` (its terms taken against `mx`); every
// invocation of the workgroup calls it, and gets the row's result.
fn fold_row(op: u32, base: u32, count: u32, lid: u32, mx: f32) -> f32 {
    var acc = start_value(op);
    for (var r = lid; r < count; r += 256u) {
        acc = combine(op, acc, term(op, bitcast<f32>(x[element(base, r)]), mx));
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            partial[lid] = combine(op, partial[lid], partial[lid + s]);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = wid.x + wid.y * nwg.x;
    // No early return: every invocation reaches every barrier; a workgroup past the end folds
    // nothing and writes nothing.
    let valid = i < p[0];
    let rank = p[2];
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
    let count = select(0u, p[4], valid);
    // log-sum-exp subtracts the row's maximum first; other ops fold nothing here.
    let mx = fold_row(2u, base, select(0u, count, op == 9u), lid, 0.0);
    var acc = fold_row(op, base, count, lid, mx);
    if (op == 1u || op == 5u) { acc = acc / f32(max(count, 1u)); }
    if (op == 8u) { acc = sqrt(acc); }
    if (op == 9u) { acc = log(acc) + mx; }
    if (valid && lid == 0u) {
        y[i] = bitcast<u32>(acc);
    }
}
