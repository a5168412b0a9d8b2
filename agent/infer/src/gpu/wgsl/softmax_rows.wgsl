// Softmax (or log-softmax) along one axis with one 256-wide workgroup per row: the row's
// maximum and sum of exponentials are each folded by the whole workgroup (a strided share per
// invocation, then a tree), then every invocation writes its share. For long rows (the
// lowering picks it from 64 elements on); the tree is workgroup_tree.wgsl's.
// p: [rows, axis_len, inner, log]
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = wid.x + wid.y * nwg.x;
    // No early return: every invocation reaches every barrier.
    let len = select(0u, p[1], r < p[0]);
    let inner = p[2];
    let base = (r / inner) * p[1] * inner + r % inner;
    var mx = -3.4028235e38;
    for (var j = lid; j < len; j += 256u) {
        mx = max(mx, bitcast<f32>(x[base + j * inner]));
    }
    mx = fold_tree(mx, lid, 2u);
    var sum = 0.0;
    for (var j = lid; j < len; j += 256u) {
        sum += exp(bitcast<f32>(x[base + j * inner]) - mx);
    }
    sum = fold_tree(sum, lid, 0u);
    let log_sum = log(sum);
    for (var j = lid; j < len; j += 256u) {
        let v = bitcast<f32>(x[base + j * inner]) - mx;
        if (p[3] == 1u) {
            y[base + j * inner] = bitcast<u32>(v - log_sum);
        } else {
            y[base + j * inner] = bitcast<u32>(exp(v) / sum);
        }
    }
}
