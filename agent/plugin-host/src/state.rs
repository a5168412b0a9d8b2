//! What each instance's store holds, and the host imports it serves.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::accel::Accel;
use crate::bindings::tern::pipeline::{accel, host, types};
use crate::metrics::MetricsSink;
use crate::stdio::GuestOutput;
use crate::{Layout, StepError, Tensor};

/// Caps the linear memory of all of an instance's memories together, and the number and size
/// of instances, memories and tables; remembers whether the memory cap was hit (so a trap can be
/// named).
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    /// Bytes of linear memory currently reserved by all memories of the store.
    pub used_bytes: usize,
    pub exceeded: bool,
}

impl MemoryCap {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            used_bytes: 0,
            exceeded: false,
        }
    }
}

/// Largest table a plugin may grow (elements; tables live in host memory).
const MAX_TABLE_ELEMENTS: usize = 1 << 16;
/// A component's core instances, memories and tables, at most.
const MAX_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 32;
/// Longest log message or metric name taken from a plugin.
const MAX_LOG_MESSAGE: usize = 4096;
const MAX_METRIC_NAME: usize = 128;

/// A guest's text made safe for one log line: bounded, no line breaks or control characters.
fn one_line(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .used_bytes
            .saturating_add(desired.saturating_sub(current));
        if total > self.max_bytes {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.max_bytes
            ));
        }
        self.used_bytes = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// The data of one instance's store.
pub(crate) struct StepState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub memory: MemoryCap,
    pub step: Arc<str>,
    pub stderr: GuestOutput,
    pub metrics: Arc<dyn MetricsSink>,
    pub accel: Arc<dyn Accel>,
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for StepState {}

impl host::Host for StepState {
    fn log(&mut self, level: host::Level, message: String) {
        let step = &*self.step;
        let message = one_line(&message, MAX_LOG_MESSAGE);
        match level {
            host::Level::Trace => tracing::trace!(step, "{message}"),
            host::Level::Debug => tracing::debug!(step, "{message}"),
            host::Level::Info => tracing::info!(step, "{message}"),
            host::Level::Warn => tracing::warn!(step, "{message}"),
            host::Level::Error => tracing::error!(step, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        self.metrics
            .counter_add(&self.step, &one_line(&name, MAX_METRIC_NAME), delta);
    }

    fn observe(&mut self, name: String, value: f64) {
        self.metrics
            .observe(&self.step, &one_line(&name, MAX_METRIC_NAME), value);
    }
}

impl StepState {
    /// Host work on a guest's behalf may not produce more than the guest could hold.
    fn check_output(&self, elements: Option<usize>, element_size: usize) -> Result<(), StepError> {
        match elements.and_then(|n| n.checked_mul(element_size)) {
            Some(bytes) if bytes <= self.memory.max_bytes => Ok(()),
            _ => Err(StepError {
                kind: types::ErrorKind::InvalidInput,
                message: format!(
                    "the result would exceed the step's memory limit of {} bytes",
                    self.memory.max_bytes
                ),
            }),
        }
    }
}

/// Elements of `image` with its height and width replaced, if the shape is an image.
fn resized_elements(image: &Tensor, layout: Layout, height: u32, width: u32) -> Option<usize> {
    let kernel_layout = match layout {
        Layout::Nchw => tern_accel_cpu::Layout::Nchw,
        Layout::Nhwc => tern_accel_cpu::Layout::Nhwc,
    };
    let dims = tern_accel_cpu::Dims::from_shape(&image.shape, kernel_layout).ok()?;
    dims.n
        .checked_mul(dims.c)?
        .checked_mul(height as usize)?
        .checked_mul(width as usize)
}

impl accel::Host for StepState {
    fn resize(
        &mut self,
        image: Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
        // Checked before any work: the host computes outside the guest's deadline and memory.
        let size = if image.dtype == types::Dtype::Uint8 {
            1
        } else {
            4
        };
        self.check_output(resized_elements(&image, layout, height, width), size)?;
        self.accel.resize(&image, layout, height, width)
    }

    fn normalize(
        &mut self,
        image: Tensor,
        layout: Layout,
        mean: Vec<f32>,
        std: Vec<f32>,
        out_layout: Layout,
    ) -> Result<Tensor, StepError> {
        let elements = if image.dtype == types::Dtype::Uint8 {
            image.data.len()
        } else {
            image.data.len() / 4
        };
        self.check_output(Some(elements), 4)?;
        self.accel
            .normalize(&image, layout, &mean, &std, out_layout)
    }
}
