//! `image-prep`: a PNG or JPEG image → RGB → resize (host `accel`) → per-channel normalization
//! (host `accel`) → an `fp32` tensor, NCHW by default.
//!
//! Config (all optional):
//! ```json
//! {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
//!  "tensor": "input", "layout": "nchw"}
//! ```
//! `size` is a number (square) or `[height, width]`. Pixels are scaled to [0, 1] before
//! normalization. Decoding refuses images over 8192 pixels a side (decompression bombs).

use std::io::Cursor;

use serde::Deserialize;
use tern_plugin_sdk::{Layout, Payload, Step, StepError, Tensor, accel, export_step, parse_config};

/// Largest accepted width or height of an input image.
pub const MAX_SIDE: u32 = 8192;
/// Largest output side: 2048² × 3 channels of f32 is 48 MiB, within a default 64 MiB step.
pub const MAX_OUTPUT_SIDE: u32 = 2048;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Square(u32),
    Rect([u32; 2]),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OutLayout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_size")]
    size: Size,
    #[serde(default = "default_mean")]
    mean: [f32; 3],
    #[serde(default = "default_std")]
    std: [f32; 3],
    #[serde(default = "default_tensor")]
    tensor: String,
    #[serde(default = "default_layout")]
    layout: OutLayout,
}

fn default_size() -> Size {
    Size::Square(224)
}
fn default_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn default_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}
fn default_tensor() -> String {
    "input".into()
}
fn default_layout() -> OutLayout {
    OutLayout::Nchw
}

#[derive(Debug)]
pub struct ImagePrep {
    height: u32,
    width: u32,
    config: Config,
}

/// Decodes PNG or JPEG bytes into an RGB `uint8` tensor `[1, H, W, 3]`.
pub fn decode_rgb(media_type: &str, data: &[u8]) -> Result<Tensor, StepError> {
    let format = match media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "image/png" => image::ImageFormat::Png,
        "image/jpeg" | "image/jpg" => image::ImageFormat::Jpeg,
        _ => image::guess_format(data)
            .ok()
            .filter(|f| matches!(f, image::ImageFormat::Png | image::ImageFormat::Jpeg))
            .ok_or_else(|| {
                StepError::unsupported(format!(
                    "media type `{media_type}`; expected image/png or image/jpeg"
                ))
            })?,
    };
    let mut reader = image::ImageReader::with_format(Cursor::new(data), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| StepError::invalid_input(format!("cannot decode the image: {e}")))?;
    let rgb = image.into_rgb8();
    let (w, h) = rgb.dimensions();
    Ok(Tensor::from_u8(
        "image",
        vec![1, u64::from(h), u64::from(w), 3],
        rgb.into_raw(),
    ))
}

impl Step for ImagePrep {
    fn configure(config: &str) -> Result<Self, StepError> {
        let config: Config = parse_config(config)?;
        let (height, width) = match config.size {
            Size::Square(s) => (s, s),
            Size::Rect([h, w]) => (h, w),
        };
        if height == 0 || width == 0 || height > MAX_OUTPUT_SIDE || width > MAX_OUTPUT_SIDE {
            return Err(StepError::invalid_config(format!(
                "size must be between 1 and {MAX_OUTPUT_SIDE}"
            )));
        }
        if config
            .std
            .iter()
            .chain(&config.mean)
            .any(|v| !v.is_finite())
            || config.std.contains(&0.0)
        {
            return Err(StepError::invalid_config(
                "mean and std must be finite, std non-zero",
            ));
        }
        Ok(Self {
            height,
            width,
            config,
        })
    }

    fn process(&mut self, input: Payload) -> Result<Payload, StepError> {
        let blob = input.into_blob()?;
        let rgb = decode_rgb(&blob.media_type, &blob.data)?;
        let resized = accel::resize(&rgb, Layout::Nhwc, self.height, self.width)?;
        let out_layout = match self.config.layout {
            OutLayout::Nchw => Layout::Nchw,
            OutLayout::Nhwc => Layout::Nhwc,
        };
        let mut tensor = accel::normalize(
            &resized,
            Layout::Nhwc,
            &self.config.mean,
            &self.config.std,
            out_layout,
        )?;
        tensor.name = self.config.tensor.clone();
        tern_plugin_sdk::metrics::observe("input_pixels", (rgb.data.len() / 3) as f64);
        Ok(Payload::Tensors(vec![tensor]))
    }
}

export_step!(ImagePrep);

#[cfg(test)]
mod tests {
    use super::*;
    use tern_plugin_sdk::Blob;

    fn png(width: u32, height: u32, pixel: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb(pixel));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("encode");
        out
    }

    #[test]
    fn turns_a_png_into_a_normalized_nchw_tensor() {
        let mut step = ImagePrep::configure(
            r#"{"size": [4, 6], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#,
        )
        .expect("config");
        let out = step
            .process(Payload::Bytes(Blob::new(
                "image/png",
                png(10, 8, [255, 0, 128]),
            )))
            .expect("runs")
            .into_tensors()
            .expect("tensors");
        let t = &out[0];
        assert_eq!(t.name, "input");
        assert_eq!(t.shape, vec![1, 3, 4, 6]);
        let v = t.to_f32().expect("f32");
        assert!(v[..24].iter().all(|x| (x - 1.0).abs() < 1e-6), "red plane");
        assert!(
            v[24..48].iter().all(|x| (x + 1.0).abs() < 1e-6),
            "green plane"
        );
        assert!(
            v[48..]
                .iter()
                .all(|x| (x - (128.0 / 255.0 - 0.5) / 0.5).abs() < 1e-5),
            "blue plane"
        );
    }

    #[test]
    fn refuses_garbage_and_other_formats_and_bad_configs() {
        let mut step = ImagePrep::configure("{}").expect("config");
        assert!(
            step.process(Payload::Bytes(Blob::new(
                "image/png",
                b"not a png".to_vec()
            )))
            .is_err()
        );
        assert!(
            step.process(Payload::Bytes(Blob::new("text/plain", b"hello".to_vec())))
                .is_err()
        );
        assert!(ImagePrep::configure(r#"{"size": 0}"#).is_err());
        assert!(
            ImagePrep::configure(r#"{"size": 4096}"#).is_err(),
            "output larger than a step's memory"
        );
        assert!(ImagePrep::configure(r#"{"std": [1, 0, 1]}"#).is_err());
        assert!(ImagePrep::configure(r#"{"sizes": 3}"#).is_err());
    }
}
