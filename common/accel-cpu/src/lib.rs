//! CPU kernels of the `accel` interface (`wit/pipeline.wit`): bilinear resize and per-channel
//! normalization with a layout change, on images stored as `[N, C, H, W]` or `[N, H, W, C]`
//! (rank 3: one image without the batch dimension).
//!
//! The plugin host runs these when it has no GPU; the plugin SDK runs them when a plugin is
//! compiled natively (for its own tests). No dependencies, no allocation beyond the output.

/// Memory layout of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

/// Largest output a kernel produces, in elements (256 MiB of f32): a request for more is an
/// error, not an allocation.
pub const MAX_OUTPUT_ELEMENTS: usize = 1 << 26;

/// Why a kernel refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelError {
    /// The shape is not rank 3 or 4.
    Rank(usize),
    /// A dimension is zero or the sizes overflow.
    Size(String),
    /// The data length does not match the shape.
    DataLength { expected: usize, got: usize },
    /// `mean`/`std` do not have one value per channel, or a std is zero.
    Channels(String),
}

impl std::fmt::Display for AccelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccelError::Rank(r) => write!(f, "image tensors must have rank 3 or 4, got rank {r}"),
            AccelError::Size(why) => write!(f, "invalid image size: {why}"),
            AccelError::DataLength { expected, got } => {
                write!(
                    f,
                    "tensor data has {got} elements but its shape needs {expected}"
                )
            }
            AccelError::Channels(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for AccelError {}

/// Dimensions of a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Whether the shape had the batch dimension.
    pub batched: bool,
}

impl Dims {
    /// Reads `shape` in `layout`.
    pub fn from_shape(shape: &[u64], layout: Layout) -> Result<Self, AccelError> {
        let dim = |i: usize| {
            usize::try_from(shape[i]).map_err(|_| AccelError::Size("dimension too large".into()))
        };
        let (batched, off) = match shape.len() {
            4 => (true, 1),
            3 => (false, 0),
            r => return Err(AccelError::Rank(r)),
        };
        let n = if batched { dim(0)? } else { 1 };
        let (c, h, w) = match layout {
            Layout::Nchw => (dim(off)?, dim(off + 1)?, dim(off + 2)?),
            Layout::Nhwc => (dim(off + 2)?, dim(off)?, dim(off + 1)?),
        };
        let dims = Self {
            n,
            c,
            h,
            w,
            batched,
        };
        if n == 0 || c == 0 || h == 0 || w == 0 {
            return Err(AccelError::Size(
                "every dimension must be at least 1".into(),
            ));
        }
        dims.element_count()?;
        Ok(dims)
    }

    /// Number of elements.
    pub fn element_count(&self) -> Result<usize, AccelError> {
        self.n
            .checked_mul(self.c)
            .and_then(|x| x.checked_mul(self.h))
            .and_then(|x| x.checked_mul(self.w))
            .ok_or_else(|| AccelError::Size("element count overflows".into()))
    }

    /// The shape of these dimensions in `layout`.
    pub fn shape(&self, layout: Layout) -> Vec<u64> {
        let inner = match layout {
            Layout::Nchw => [self.c, self.h, self.w],
            Layout::Nhwc => [self.h, self.w, self.c],
        };
        let mut shape: Vec<u64> = if self.batched {
            vec![self.n as u64]
        } else {
            Vec::new()
        };
        shape.extend(inner.iter().map(|&d| d as u64));
        shape
    }

    fn index(&self, layout: Layout, n: usize, c: usize, y: usize, x: usize) -> usize {
        match layout {
            Layout::Nchw => ((n * self.c + c) * self.h + y) * self.w + x,
            Layout::Nhwc => ((n * self.h + y) * self.w + x) * self.c + c,
        }
    }
}

fn check_len(dims: &Dims, got: usize) -> Result<(), AccelError> {
    let expected = dims.element_count()?;
    if expected != got {
        return Err(AccelError::DataLength { expected, got });
    }
    Ok(())
}

/// One axis of bilinear sampling: for each output coordinate, the two source coordinates and the
/// weight of the second.
fn axis(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = axis_scale(src, dst);
    (0..dst)
        .map(|i| {
            let s = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f32);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(src - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

/// A pixel type the kernels read and write.
/// Checks a resize request (as every implementation of `accel` must) and returns the input and
/// output dimensions.
pub fn resize_dims(
    shape: &[u64],
    layout: Layout,
    src_len: usize,
    out_h: usize,
    out_w: usize,
) -> Result<(Dims, Dims), AccelError> {
    let dims = Dims::from_shape(shape, layout)?;
    check_len(&dims, src_len)?;
    let out = Dims {
        h: out_h,
        w: out_w,
        ..dims
    };
    if out_h == 0 || out_w == 0 {
        return Err(AccelError::Size(
            "output height and width must be at least 1".into(),
        ));
    }
    let out_len = out.element_count()?;
    if out_len > MAX_OUTPUT_ELEMENTS {
        return Err(AccelError::Size(format!(
            "output of {out_len} elements exceeds {MAX_OUTPUT_ELEMENTS}"
        )));
    }
    Ok((dims, out))
}

/// Checks a normalize request and returns the dimensions and `1 / std` per channel.
pub fn normalize_dims(
    shape: &[u64],
    layout: Layout,
    src_len: usize,
    mean: &[f32],
    std: &[f32],
) -> Result<(Dims, Vec<f32>), AccelError> {
    let dims = Dims::from_shape(shape, layout)?;
    check_len(&dims, src_len)?;
    if mean.len() != dims.c || std.len() != dims.c {
        return Err(AccelError::Channels(format!(
            "mean and std need one value per channel ({}), got {} and {}",
            dims.c,
            mean.len(),
            std.len()
        )));
    }
    if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
        return Err(AccelError::Channels(
            "std values must be finite and non-zero".into(),
        ));
    }
    Ok((dims, std.iter().map(|s| 1.0 / s).collect()))
}

/// The scale of a bilinear resize along one axis, as every implementation computes it.
pub fn axis_scale(src: usize, dst: usize) -> f32 {
    src as f32 / dst as f32
}

pub trait Pixel: Copy {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Pixel for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Pixel for u8 {
    fn to_f32(self) -> f32 {
        f32::from(self)
    }
    fn from_f32(v: f32) -> Self {
        v.round().clamp(0.0, 255.0) as u8
    }
}

/// Bilinear resize (half-pixel centers, edge clamped). Returns the output and its dimensions.
pub fn resize<T: Pixel>(
    src: &[T],
    shape: &[u64],
    layout: Layout,
    out_h: usize,
    out_w: usize,
) -> Result<(Vec<T>, Dims), AccelError> {
    let (dims, out) = resize_dims(shape, layout, src.len(), out_h, out_w)?;
    let out_len = out.element_count()?;
    let xs = axis(dims.w, out_w);
    let ys = axis(dims.h, out_h);
    let mut dst = vec![T::from_f32(0.0); out_len];
    for n in 0..dims.n {
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                for c in 0..dims.c {
                    let p = |y, x| src[dims.index(layout, n, c, y, x)].to_f32();
                    let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                    let bottom = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                    dst[out.index(layout, n, c, oy, ox)] = T::from_f32(top + (bottom - top) * fy);
                }
            }
        }
    }
    Ok((dst, out))
}

/// `(x * scale - mean[c]) / std[c]` into f32, converting `layout` to `out_layout`.
/// Use `scale = 1/255` for u8 images, 1 for f32.
pub fn normalize<T: Pixel>(
    src: &[T],
    shape: &[u64],
    layout: Layout,
    scale: f32,
    mean: &[f32],
    std: &[f32],
    out_layout: Layout,
) -> Result<(Vec<f32>, Dims), AccelError> {
    let (dims, inv) = normalize_dims(shape, layout, src.len(), mean, std)?;
    let mut dst = vec![0f32; src.len()];
    for n in 0..dims.n {
        for c in 0..dims.c {
            for y in 0..dims.h {
                for x in 0..dims.w {
                    let v = src[dims.index(layout, n, c, y, x)].to_f32() * scale;
                    dst[dims.index(out_layout, n, c, y, x)] = (v - mean[c]) * inv[c];
                }
            }
        }
    }
    Ok((dst, dims))
}

/// Element types the kernels take, as tensors store them (little-endian bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    U8,
    F32,
}

fn f32s_from_le(data: &[u8]) -> Result<Vec<f32>, AccelError> {
    if !data.len().is_multiple_of(4) {
        return Err(AccelError::Size(format!(
            "fp32 data of {} bytes is not a multiple of 4",
            data.len()
        )));
    }
    Ok(data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn f32s_to_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// [`resize`] on tensor bytes; the output keeps the element type. Returns the data and shape.
pub fn resize_bytes(
    element: Element,
    data: &[u8],
    shape: &[u64],
    layout: Layout,
    out_h: usize,
    out_w: usize,
) -> Result<(Vec<u8>, Vec<u64>), AccelError> {
    match element {
        Element::U8 => {
            resize(data, shape, layout, out_h, out_w).map(|(d, dims)| (d, dims.shape(layout)))
        }
        Element::F32 => resize(&f32s_from_le(data)?, shape, layout, out_h, out_w)
            .map(|(d, dims)| (f32s_to_le(&d), dims.shape(layout))),
    }
}

/// [`normalize`] on tensor bytes into f32 bytes (u8 input scaled to [0, 1] first). Returns the
/// data and shape (in `out_layout`).
pub fn normalize_bytes(
    element: Element,
    data: &[u8],
    shape: &[u64],
    layout: Layout,
    mean: &[f32],
    std: &[f32],
    out_layout: Layout,
) -> Result<(Vec<u8>, Vec<u64>), AccelError> {
    let (values, dims) = match element {
        Element::U8 => normalize(data, shape, layout, 1.0 / 255.0, mean, std, out_layout)?,
        Element::F32 => normalize(
            &f32s_from_le(data)?,
            shape,
            layout,
            1.0,
            mean,
            std,
            out_layout,
        )?,
    };
    Ok((f32s_to_le(&values), dims.shape(out_layout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_constant_images_constant_and_maps_corners() {
        let src = vec![7u8; 4 * 6 * 3];
        let (out, dims) = resize(&src, &[1, 4, 6, 3], Layout::Nhwc, 9, 2).unwrap();
        assert_eq!(dims.shape(Layout::Nhwc), vec![1, 9, 2, 3]);
        assert!(out.iter().all(|&v| v == 7));

        // 2x2 → 4x4 upsampling of a gradient: corners keep source values (edge clamping).
        let src = [0.0f32, 10.0, 20.0, 30.0];
        let (out, _) = resize(&src, &[1, 1, 2, 2], Layout::Nchw, 4, 4).unwrap();
        assert_eq!(out[0], 0.0);
        assert_eq!(out[15], 30.0);
        assert!((out[1] - 2.5).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn downsampling_by_two_averages_pixel_pairs() {
        let src: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let (out, _) = resize(&src, &[1, 1, 8], Layout::Nchw, 1, 4).unwrap();
        assert_eq!(out, vec![0.5, 2.5, 4.5, 6.5]);
    }

    #[test]
    fn normalize_scales_u8_and_transposes_to_nchw() {
        // One 1x2 image with 3 channels, NHWC.
        let src = [255u8, 0, 51, 0, 255, 102];
        let (out, dims) = normalize(
            &src,
            &[1, 1, 2, 3],
            Layout::Nhwc,
            1.0 / 255.0,
            &[0.5, 0.5, 0.0],
            &[0.5, 0.5, 0.2],
            Layout::Nchw,
        )
        .unwrap();
        assert_eq!(dims.shape(Layout::Nchw), vec![1, 3, 1, 2]);
        let expect = [1.0, -1.0, -1.0, 1.0, 1.0, 2.0];
        for (a, b) in out.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn byte_kernels_match_typed_kernels() {
        let values = [0.0f32, 10.0, 20.0, 30.0];
        let (bytes, shape) = resize_bytes(
            Element::F32,
            &f32s_to_le(&values),
            &[1, 1, 2, 2],
            Layout::Nchw,
            4,
            4,
        )
        .unwrap();
        let (typed, _) = resize(&values, &[1, 1, 2, 2], Layout::Nchw, 4, 4).unwrap();
        assert_eq!(
            (f32s_from_le(&bytes).unwrap(), shape),
            (typed, vec![1, 1, 4, 4])
        );
        let (bytes, shape) = normalize_bytes(
            Element::U8,
            &[255, 0, 51],
            &[1, 1, 3],
            Layout::Nhwc,
            &[0.0; 3],
            &[1.0; 3],
            Layout::Nchw,
        )
        .unwrap();
        assert_eq!(
            shape,
            vec![3, 1, 1],
            "rank 3: H=1, W=1, C=3 becomes [C, H, W]"
        );
        let (typed, _) = normalize(
            &[255u8, 0, 51],
            &[1, 1, 3],
            Layout::Nhwc,
            1.0 / 255.0,
            &[0.0; 3],
            &[1.0; 3],
            Layout::Nchw,
        )
        .unwrap();
        assert_eq!(f32s_from_le(&bytes).unwrap(), typed);
        assert!(resize_bytes(Element::F32, &[0; 3], &[1, 1, 1], Layout::Nchw, 1, 1).is_err());
    }

    #[test]
    fn refuses_bad_shapes_and_huge_outputs() {
        assert_eq!(
            resize(&[0u8; 3], &[3], Layout::Nhwc, 1, 1).unwrap_err(),
            AccelError::Rank(1)
        );
        assert!(matches!(
            resize(&[0u8; 5], &[1, 2, 3], Layout::Nhwc, 1, 1),
            Err(AccelError::DataLength { .. })
        ));
        assert!(matches!(
            resize(&[0u8; 6], &[1, 2, 3], Layout::Nhwc, 100_000, 100_000),
            Err(AccelError::Size(_))
        ));
        assert!(matches!(
            normalize(
                &[0u8; 6],
                &[1, 2, 3],
                Layout::Nhwc,
                1.0,
                &[0.0],
                &[1.0],
                Layout::Nchw
            ),
            Err(AccelError::Channels(_))
        ));
        assert!(matches!(
            resize(&[0u8; 0], &[0, 2, 3], Layout::Nhwc, 1, 1),
            Err(AccelError::Size(_))
        ));
    }
}
