//! Shapes for kernels: contiguous and broadcast strides, fixed-size parameter arrays, and the
//! spatial geometry of convolutions and pools.

use super::*;

pub(super) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Strides of `shape` broadcast (aligned right) to a result of rank `rank`: 0 on broadcast axes.
pub(super) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let strides = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 && out[i] != 1 {
                0
            } else {
                strides[i - lead]
            }
        })
        .collect()
}

/// `values` padded to eight entries with `fill`.
pub(super) fn pad8(values: &[usize], fill: usize) -> Vec<u32> {
    let mut out: Vec<u32> = values.iter().map(|&v| u(v)).collect();
    out.resize(MAX_RANK, u(fill));
    out
}

/// Spatial geometry of a convolution or pool, as (depth, height, width) with leading 1s for 1-D
/// and 2-D: input, output, kernel, strides, padding before, dilations.
pub(super) struct Geometry {
    pub(super) input: [usize; 3],
    pub(super) output: [usize; 3],
    pub(super) kernel: [usize; 3],
    pub(super) strides: [usize; 3],
    pub(super) pad: [usize; 3],
    pub(super) dilations: [usize; 3],
}

impl Geometry {
    /// A convolution's or pool's.
    pub(super) fn new(spec: &PoolSpec, in_sp: &[usize], out_sp: &[usize]) -> Option<Geometry> {
        let pad = spec
            .computed_padding(in_sp)
            .iter()
            .map(|p| p.pad_before)
            .collect();
        Self::with_padding(spec, in_sp, out_sp, pad)
    }

    /// A transposed convolution's.
    pub(super) fn for_deconv(
        spec: &PoolSpec,
        in_sp: &[usize],
        out_sp: &[usize],
        adjustments: &[usize],
    ) -> Option<Geometry> {
        let pad = spec
            .padding
            .compute_for_deconv(
                in_sp,
                &spec.kernel_shape,
                &spec.dilations(),
                &spec.strides(),
                adjustments,
            )
            .ok()?
            .iter()
            .map(|p| p.pad_before)
            .collect();
        Self::with_padding(spec, in_sp, out_sp, pad)
    }

    pub(super) fn with_padding(
        spec: &PoolSpec,
        in_sp: &[usize],
        out_sp: &[usize],
        pad: Vec<usize>,
    ) -> Option<Geometry> {
        let rank = spec.kernel_shape.len();
        if !(1..=3).contains(&rank)
            || in_sp.len() != rank
            || out_sp.len() != rank
            || pad.len() != rank
        {
            return None;
        }
        let (dil, strides) = (spec.dilations(), spec.strides());
        let lift = |f: &dyn Fn(usize) -> usize, fill: usize| {
            let mut v = [fill; 3];
            for (i, slot) in v.iter_mut().skip(3 - rank).enumerate() {
                *slot = f(i);
            }
            v
        };
        Some(Geometry {
            input: lift(&|i| in_sp[i], 1),
            output: lift(&|i| out_sp[i], 1),
            kernel: lift(&|i| spec.kernel_shape[i], 1),
            strides: lift(&|i| strides[i], 1),
            pad: lift(&|i| pad[i], 0),
            dilations: lift(&|i| dil[i], 1),
        })
    }

    /// [H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW]
    pub(super) fn plane(&self) -> [u32; 12] {
        [
            self.input[1],
            self.input[2],
            self.output[1],
            self.output[2],
            self.kernel[1],
            self.kernel[2],
            self.strides[1],
            self.strides[2],
            self.pad[1],
            self.pad[2],
            self.dilations[1],
            self.dilations[2],
        ]
        .map(u)
    }

    /// [D, OD, KD, SD, PD, DD]
    pub(super) fn depth(&self) -> [u32; 6] {
        [
            self.input[0],
            self.output[0],
            self.kernel[0],
            self.strides[0],
            self.pad[0],
            self.dilations[0],
        ]
        .map(u)
    }

    pub(super) fn output_points(&self) -> usize {
        self.output.iter().product()
    }

    pub(super) fn kernel_points(&self) -> usize {
        self.kernel.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_row_major_and_zero_on_broadcast_axes() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
        // [3, 1] against [2, 3, 4]: a leading axis added, the 1 broadcast.
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), [0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], &[2, 3, 4]), [12, 4, 1]);
        // A 1 against a 1 keeps its stride (nothing is broadcast).
        assert_eq!(broadcast_strides(&[1, 4], &[1, 4]), [4, 1]);
    }

    #[test]
    fn parameter_arrays_are_padded_to_the_kernels_rank() {
        assert_eq!(pad8(&[2, 3], 1), [2, 3, 1, 1, 1, 1, 1, 1]);
        assert_eq!(pad8(&[], 0).len(), MAX_RANK);
    }

    #[test]
    fn a_geometry_gives_its_planes_and_counts() {
        let g = Geometry {
            input: [1, 8, 6],
            output: [1, 4, 3],
            kernel: [1, 3, 2],
            strides: [1, 2, 2],
            pad: [0, 1, 0],
            dilations: [1, 1, 1],
        };
        assert_eq!(g.plane(), [8, 6, 4, 3, 3, 2, 2, 2, 1, 0, 1, 1]);
        assert_eq!(g.depth(), [1, 1, 1, 1, 0, 1]);
        assert_eq!((g.output_points(), g.kernel_points()), (12, 6));
    }
}
