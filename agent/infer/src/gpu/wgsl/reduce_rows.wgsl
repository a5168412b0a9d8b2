// Reduction over some axes with one 256-wide workgroup per output element: each invocation
// folds a strided share of the reduced elements, then the workgroup combines the 256 partial
// results in a tree. For long reductions (the lowering picks it from 64 elements on), so that
// no single invocation walks a whole row. Parameters and ops: reduce_common.wgsl.
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

// Folds `count` elements of the row at `base` with `op` (its terms taken against `mx`); every
// invocation of the workgroup calls it, and gets the row's result.
fn fold_row(op: u32, base: u32, count: u32, lid: u32, mx: f32) -> f32 {
    var acc = start_value(op);
    for (var r = lid; r < count; r += 256u) {
        acc = combine(op, acc, term(op, bitcast<f32>(x[reduced_element(base, r)]), mx));
    }
    return fold_tree(acc, lid, op);
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
    let op = p[1];
    let base = row_base(i);
    let count = select(0u, p[4], valid);
    // log-sum-exp subtracts the row's maximum first; other ops fold nothing here.
    let mx = fold_row(2u, base, select(0u, count, op == 9u), lid, 0.0);
    let acc = fold_row(op, base, count, lid, mx);
    if (valid && lid == 0u) {
        y[i] = bitcast<u32>(finish(op, acc, count, mx));
    }
}
