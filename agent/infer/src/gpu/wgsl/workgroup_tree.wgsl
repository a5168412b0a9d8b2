// A 256-wide workgroup combining one value per invocation (reduce_common.wgsl's `combine`):
// every invocation calls `fold_tree` (it holds barriers) and gets the result.
var<workgroup> partial: array<f32, 256>;

fn fold_tree(v: f32, lid: u32, op: u32) -> f32 {
    partial[lid] = v;
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
