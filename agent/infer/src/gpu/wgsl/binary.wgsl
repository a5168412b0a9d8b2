// out = op(a, b) with broadcasting through strides (0 on broadcast axes).
// p: [n, op, rank, _, shape[8], a_strides[8], b_strides[8], a_offset, b_offset]
@group(0) @binding(1) var<storage, read> a: array<u32>;
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

fn fop(op: u32, x: f32, y: f32) -> u32 {
    switch op {
        case 0u: { return bitcast<u32>(x + y); }
        case 1u: { return bitcast<u32>(x - y); }
        case 2u: { return bitcast<u32>(x * y); }
        case 3u: { return bitcast<u32>(x / y); }
        case 4u: {
            // pow with ONNX semantics for negative bases and integral exponents
            if (x < 0.0 && y == floor(y)) {
                let r = pow(-x, y);
                return bitcast<u32>(select(r, -r, (i32(y) & 1) == 1));
            }
            return bitcast<u32>(pow(x, y));
        }
        case 5u: { return bitcast<u32>(max(x, y)); }
        case 6u: { return bitcast<u32>(min(x, y)); }
        case 7u: { return u32(x < y); }
        case 8u: { return u32(x > y); }
        case 9u: { return u32(x == y); }
        case 10u: { return u32(x <= y); }
        case 11u: { return u32(x >= y); }
        case 12u: { return bitcast<u32>(x - y * trunc(x / y)); }
        case 13u: { return u32(x != y); }
        default: { return 0u; }
    }
}

fn iop(op: u32, x: i32, y: i32) -> u32 {
    switch op {
        case 20u: { return bitcast<u32>(x + y); }
        case 21u: { return bitcast<u32>(x - y); }
        case 22u: { return bitcast<u32>(x * y); }
        case 23u: {
            // truncating division, as tract computes integers
            if (y == 0) { return 0u; }
            return bitcast<u32>(x / y);
        }
        case 25u: { return bitcast<u32>(max(x, y)); }
        case 26u: { return bitcast<u32>(min(x, y)); }
        case 27u: { return u32(x < y); }
        case 28u: { return u32(x > y); }
        case 29u: { return u32(x == y); }
        case 30u: { return u32(x <= y); }
        case 31u: { return u32(x >= y); }
        case 32u: {
            // remainder with the dividend's sign, as tract computes integers
            if (y == 0) { return 0u; }
            return bitcast<u32>(x % y);
        }
        case 33u: { return u32(x != y); }
        case 40u: { return u32((x != 0) && (y != 0)); }
        case 41u: { return u32((x != 0) || (y != 0)); }
        case 42u: { return u32((x != 0) != (y != 0)); }
        default: { return 0u; }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_id(gid, nwg);
    if (i >= p[0]) {
        return;
    }
    let rank = p[2];
    var rem = i;
    var ai = p[28];
    var bi = p[29];
    for (var d = 0u; d < rank; d++) {
        let axis = rank - 1u - d;
        let extent = p[4u + axis];
        let c = rem % extent;
        rem = rem / extent;
        ai += c * p[12u + axis];
        bi += c * p[20u + axis];
    }
    let op = p[1];
    if (op < 20u) {
        out[i] = fop(op, bitcast<f32>(a[ai]), bitcast<f32>(b[bi]));
    } else {
        out[i] = iop(op, bitcast<i32>(a[ai]), bitcast<i32>(b[bi]));
    }
}
