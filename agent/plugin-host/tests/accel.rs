//! `accel` on the GPU against the CPU: the same answers for the same requests, the same errors
//! for bad ones, and a real plugin (image-prep) giving the same tensor through either.

use std::sync::Arc;

use tern_plugin_host::{
    Accel, Blob, CpuAccel, Dtype, EngineOptions, GpuAccel, Layout, Payload, PluginEngine,
    StepLimits, Tensor,
};

#[path = "support/components.rs"]
mod components;
use components::component;

fn gpu() -> Option<GpuAccel> {
    let gpu = GpuAccel::detect();
    if gpu.is_none() {
        tern_skips::skip_unless_required("TERN_REQUIRE_GPU", "there is no GPU adapter");
    }
    gpu
}

/// A deterministic image with structure in every channel.
fn image(dtype: Dtype, shape: &[u64]) -> Tensor {
    let n: u64 = shape.iter().product();
    let data = match dtype {
        Dtype::Uint8 => (0..n).map(|i| ((i * 37 + i / 7) % 256) as u8).collect(),
        _ => (0..n)
            .flat_map(|i| (((i * 37 + i / 7) % 1000) as f32 / 997.0 - 0.3).to_le_bytes())
            .collect(),
    };
    Tensor {
        name: "img".into(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    match t.dtype {
        Dtype::Uint8 => t.data.iter().map(|&b| f32::from(b)).collect(),
        _ => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

fn assert_close(gpu: &Tensor, cpu: &Tensor, tolerance: f32, what: &str) {
    assert_eq!((gpu.dtype, &gpu.shape), (cpu.dtype, &cpu.shape), "{what}");
    for (i, (g, c)) in values(gpu).iter().zip(values(cpu)).enumerate() {
        assert!(
            (g - c).abs() <= tolerance,
            "{what}: element {i}: gpu {g}, cpu {c}"
        );
    }
}

/// dtype, layout, input shape, output height and width.
type Case = (Dtype, Layout, &'static [u64], (u32, u32));
/// A named call that must fail the same way on both implementations.
type BadCall<'a> = (
    &'a str,
    Box<dyn Fn(&dyn Accel) -> Result<Tensor, tern_plugin_host::StepError> + 'a>,
);

#[test]
fn gpu_resize_and_normalize_match_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let cases: [Case; 5] = [
        (Dtype::Uint8, Layout::Nhwc, &[48, 64, 3], (224, 224)),
        (Dtype::Uint8, Layout::Nhwc, &[2, 37, 41, 3], (16, 20)),
        (Dtype::Uint8, Layout::Nchw, &[3, 30, 50], (7, 9)),
        (Dtype::Fp32, Layout::Nchw, &[1, 3, 33, 17], (64, 48)),
        (Dtype::Fp32, Layout::Nhwc, &[20, 20, 1], (5, 5)),
    ];
    for (dtype, layout, shape, (h, w)) in cases {
        let img = image(dtype, shape);
        let what = format!("resize {dtype:?} {layout:?} {shape:?} → {h}×{w}");
        let g = gpu.resize(&img, layout, h, w).expect(&what);
        let c = CpuAccel.resize(&img, layout, h, w).expect(&what);
        let tolerance = if dtype == Dtype::Uint8 { 1.0 } else { 1e-5 };
        assert_close(&g, &c, tolerance, &what);

        let channels = match layout {
            Layout::Nchw => shape[shape.len() - 3],
            Layout::Nhwc => shape[shape.len() - 1],
        } as usize;
        let mean: Vec<f32> = (0..channels).map(|c| 0.4 + c as f32 * 0.05).collect();
        let std: Vec<f32> = (0..channels).map(|c| 0.2 + c as f32 * 0.01).collect();
        for out_layout in [Layout::Nchw, Layout::Nhwc] {
            let what = format!("normalize {dtype:?} {layout:?} → {out_layout:?} {shape:?}");
            let g = gpu
                .normalize(&img, layout, &mean, &std, out_layout)
                .expect(&what);
            let c = CpuAccel
                .normalize(&img, layout, &mean, &std, out_layout)
                .expect(&what);
            assert_close(&g, &c, 1e-5, &what);
        }
    }
}

#[test]
fn gpu_refuses_what_the_cpu_refuses() {
    let Some(gpu) = gpu() else { return };
    let img = image(Dtype::Uint8, &[4, 4, 3]);
    let truncated = Tensor {
        data: img.data[..10].to_vec(),
        ..img.clone()
    };
    let bad: [BadCall; 4] = [
        (
            "zero size",
            Box::new(|a: &dyn Accel| a.resize(&img, Layout::Nhwc, 0, 4)),
        ),
        (
            "truncated",
            Box::new(|a: &dyn Accel| a.resize(&truncated, Layout::Nhwc, 2, 2)),
        ),
        (
            "channels",
            Box::new(|a: &dyn Accel| a.normalize(&img, Layout::Nhwc, &[0.5], &[0.5], Layout::Nchw)),
        ),
        (
            "zero std",
            Box::new(|a: &dyn Accel| {
                a.normalize(
                    &img,
                    Layout::Nhwc,
                    &[0.0; 3],
                    &[1.0, 0.0, 1.0],
                    Layout::Nchw,
                )
            }),
        ),
    ];
    for (what, call) in bad {
        let g = call(&gpu).expect_err(what);
        let c = call(&CpuAccel).expect_err(what);
        assert_eq!((g.kind, g.message), (c.kind, c.message), "{what}");
    }
}

#[test]
fn image_prep_gives_the_same_tensor_through_the_gpu() {
    let Some(gpu) = gpu() else { return };
    let img = image::RgbImage::from_fn(160, 120, |x, y| {
        image::Rgb([
            (x % 256) as u8,
            (y * 2 % 256) as u8,
            ((x * y / 7) % 256) as u8,
        ])
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encode");
    let input = Payload::Bytes(Blob {
        media_type: "image/png".into(),
        data: png,
    });
    let run = |accel: Arc<dyn Accel>| {
        let engine = PluginEngine::new(EngineOptions {
            accel,
            ..EngineOptions::default()
        })
        .expect("engine");
        let plugin = engine
            .load_file(&component("image_prep"))
            .expect("image-prep loads");
        let step = plugin
            .step(
                "prep",
                r#"{"size": 64, "tensor": "input"}"#,
                StepLimits::default(),
            )
            .expect("step");
        match step.process(&input).expect("process") {
            Payload::Tensors(mut t) => t.remove(0),
            Payload::Bytes(_) => panic!("image-prep returns tensors"),
        }
    };
    let g = run(Arc::new(gpu));
    let c = run(Arc::new(CpuAccel));
    assert_eq!(g.shape, vec![1, 3, 64, 64]);
    // uint8 resize may round one level apart, which normalization scales by 1/(255·std).
    assert_close(&g, &c, 1.0 / (255.0 * 0.224) + 1e-4, "image-prep");
}
