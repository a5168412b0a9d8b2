//! The WGSL kernels and how their sources are put together.

const COMMON: &str = include_str!("wgsl/common.wgsl");
/// The reductions' parameters, ops and indexing.
const REDUCE_COMMON: &str = include_str!("wgsl/reduce_common.wgsl");
/// A workgroup combining one value per invocation.
const TREE: &str = include_str!("wgsl/workgroup_tree.wgsl");

/// A compute kernel; GEMM kernels come in tile sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Elementwise,
    Binary,
    Copy,
    Fill,
    Cast,
    Gather,
    Reduce,
    /// A reduction with a workgroup per output element (long reductions).
    ReduceRows,
    Softmax,
    /// Softmax with a workgroup per row (long rows).
    SoftmaxRows,
    Pool,
    ConvDirect,
    Select,
    PrepResize,
    PrepNormalize,
    Deconv,
    /// Batched matmul with a `tile`×`tile` register block per invocation.
    Matmul {
        tile: u32,
    },
    /// Convolution as an implicit GEMM.
    ConvGemm {
        tile: u32,
    },
}

impl Kernel {
    pub fn label(self) -> &'static str {
        match self {
            Kernel::Elementwise => "elementwise",
            Kernel::Binary => "binary",
            Kernel::Copy => "copy",
            Kernel::Fill => "fill",
            Kernel::Cast => "cast",
            Kernel::Gather => "gather",
            Kernel::Reduce => "reduce",
            Kernel::ReduceRows => "reduce_rows",
            Kernel::Softmax => "softmax",
            Kernel::SoftmaxRows => "softmax_rows",
            Kernel::Pool => "pool",
            Kernel::ConvDirect => "conv_direct",
            Kernel::Select => "select",
            Kernel::PrepResize => "prep_resize",
            Kernel::PrepNormalize => "prep_normalize",
            Kernel::Deconv => "deconv",
            Kernel::Matmul { .. } => "matmul",
            Kernel::ConvGemm { .. } => "conv_gemm",
        }
    }

    /// The complete WGSL source.
    pub fn source(self) -> String {
        let body = match self {
            Kernel::Elementwise => include_str!("wgsl/elementwise.wgsl").to_owned(),
            Kernel::Binary => include_str!("wgsl/binary.wgsl").to_owned(),
            Kernel::Copy => include_str!("wgsl/copy.wgsl").to_owned(),
            Kernel::Fill => include_str!("wgsl/fill.wgsl").to_owned(),
            Kernel::Cast => include_str!("wgsl/cast.wgsl").to_owned(),
            Kernel::Gather => include_str!("wgsl/gather.wgsl").to_owned(),
            Kernel::Reduce => format!("{REDUCE_COMMON}\n{}", include_str!("wgsl/reduce.wgsl")),
            Kernel::ReduceRows => format!(
                "{REDUCE_COMMON}\n{TREE}\n{}",
                include_str!("wgsl/reduce_rows.wgsl")
            ),
            Kernel::Softmax => include_str!("wgsl/softmax.wgsl").to_owned(),
            Kernel::SoftmaxRows => format!(
                "{REDUCE_COMMON}\n{TREE}\n{}",
                include_str!("wgsl/softmax_rows.wgsl")
            ),
            Kernel::Pool => include_str!("wgsl/pool.wgsl").to_owned(),
            Kernel::ConvDirect => include_str!("wgsl/conv_direct.wgsl").to_owned(),
            Kernel::Select => include_str!("wgsl/select.wgsl").to_owned(),
            Kernel::PrepResize => include_str!("wgsl/prep_resize.wgsl").to_owned(),
            Kernel::PrepNormalize => include_str!("wgsl/prep_normalize.wgsl").to_owned(),
            Kernel::Deconv => include_str!("wgsl/deconv.wgsl").to_owned(),
            Kernel::Matmul { tile } => gemm(tile, include_str!("wgsl/matmul_io.wgsl")),
            Kernel::ConvGemm { tile } => gemm(tile, include_str!("wgsl/conv_io.wgsl")),
        };
        format!("{COMMON}\n{body}")
    }
}

fn gemm(tile: u32, io: &str) -> String {
    let tile = tile.to_string();
    let core = include_str!("wgsl/gemm.wgsl")
        .replace("__TM__", &tile)
        .replace("__TN__", &tile);
    format!("{core}\n{io}")
}

/// The register block for a GEMM of `m`×`n` outputs: big tiles for big problems, small tiles so
/// that small ones still fill the device.
pub fn gemm_tile(m: usize, n: usize) -> u32 {
    let outputs = m.saturating_mul(n);
    if m >= 128 && n >= 128 && outputs >= 1 << 20 {
        8
    } else if m >= 64 && n >= 64 && outputs >= 1 << 14 {
        4
    } else {
        2
    }
}

/// From how many elements a reduction or softmax row gets a workgroup of its own rather than
/// one invocation: below it, a thread per row keeps the device full with many short rows.
pub const ROW_PER_WORKGROUP_FROM: usize = 64;

/// Workgroups for `rows` rows of a kernel with a workgroup per row, as a 2-D grid under the
/// 65,535 limit (the kernel skips those past the end).
pub fn grid_rows(rows: usize) -> (u32, u32, u32) {
    let rows = rows.max(1);
    let x = rows.min(65_535);
    let y = rows.div_ceil(x);
    (x as u32, y as u32, 1)
}

/// Workgroups for `n` invocations of a 256-wide kernel, as a 2-D grid under the 65,535 limit.
pub fn grid_1d(n: usize) -> (u32, u32, u32) {
    let groups = n.div_ceil(256).max(1);
    let x = groups.min(65_535);
    let y = groups.div_ceil(x);
    (x as u32, y as u32, 1)
}
