// Shared by every kernel: the parameter block, index helpers and the unary functions.
// Every tensor buffer is an array of 32-bit words: f32, i32 or a 0/1 boolean, reinterpreted
// with bitcast where a kernel needs a number.

@group(0) @binding(0) var<storage, read> p: array<u32>;

fn pf(i: u32) -> f32 {
    return bitcast<f32>(p[i]);
}

// The linear index of this invocation in a 2-D grid of 256-wide workgroups.
fn linear_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

fn erf_approx(x: f32) -> f32 {
    // Abramowitz and Stegun 7.1.26 refined (max abs error 1.5e-7).
    let s = sign(x);
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * exp(-a * a);
    return s * y;
}

fn tanh_safe(x: f32) -> f32 {
    let c = clamp(x, -15.0, 15.0);
    let e = exp(2.0 * c);
    return (e - 1.0) / (e + 1.0);
}

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// Unary functions by code; `a` and `b` are the function's parameters where it has them.
fn unary(x: f32, code: u32, a: f32, b: f32) -> f32 {
    switch code {
        case 0u: { return x; }
        case 2u: { return sigmoid(x); }
        case 3u: { return tanh_safe(x); }
        case 4u: { return erf_approx(x); }
        case 5u: { return 0.5 * x * (1.0 + erf_approx(x * 0.7071067811865476)); }
        case 6u: { return 0.5 * x * (1.0 + tanh_safe(0.7978845608028654 * (x + 0.044715 * x * x * x))); }
        case 8u: { return x * clamp(x / 6.0 + 0.5, 0.0, 1.0); }
        case 9u: { return exp(x); }
        case 10u: { return log(x); }
        case 11u: { return sqrt(x); }
        case 12u: { return inverseSqrt(x); }
        case 13u: { return 1.0 / x; }
        case 14u: { return abs(x); }
        case 15u: { return -x; }
        case 16u: { return floor(x); }
        case 17u: { return ceil(x); }
        case 18u: { return round(x); }
        case 19u: { return sin(x); }
        case 20u: { return cos(x); }
        case 21u: { return x * x; }
        case 22u: { return x * sigmoid(x); }
        case 23u: { return select(a * x, x, x >= 0.0); }
        case 26u: { return sign(x); }
        case 30u: { return tan(x); }
        case 31u: { return asin(x); }
        case 32u: { return acos(x); }
        case 33u: { return atan(x); }
        case 34u: { return sinh(x); }
        case 35u: { return cosh(x); }
        case 38u: { return inverseSqrt(x + a); }
        case 37u: {
            // x^a with ONNX semantics for negative bases and integral exponents
            if (x < 0.0 && a == floor(a)) {
                let r = pow(-x, a);
                return select(r, -r, (i32(a) & 1) == 1);
            }
            return pow(x, a);
        }
        default: { return x; }
    }
}
