//! What each instance's store holds, and the host imports it serves.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::accel::Accel;
use crate::bindings::tern::pipeline::{accel, host, types};
use crate::metrics::MetricsSink;
use crate::stdio::GuestOutput;
use crate::{Layout, StepError, Tensor};

/// Caps linear memory and remembers whether the cap was hit (so a trap can be named).
#[derive(Debug)]
pub(crate) struct MemoryCap {
    pub max_bytes: usize,
    pub exceeded: bool,
}

/// Largest table a plugin may grow (elements).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit of {} bytes exceeded",
                self.max_bytes
            ));
        }
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
        match level {
            host::Level::Trace => tracing::trace!(step, "{message}"),
            host::Level::Debug => tracing::debug!(step, "{message}"),
            host::Level::Info => tracing::info!(step, "{message}"),
            host::Level::Warn => tracing::warn!(step, "{message}"),
            host::Level::Error => tracing::error!(step, "{message}"),
        }
    }

    fn counter_add(&mut self, name: String, delta: u64) {
        self.metrics.counter_add(&self.step, &name, delta);
    }

    fn observe(&mut self, name: String, value: f64) {
        self.metrics.observe(&self.step, &name, value);
    }
}

impl accel::Host for StepState {
    fn resize(
        &mut self,
        image: Tensor,
        layout: Layout,
        height: u32,
        width: u32,
    ) -> Result<Tensor, StepError> {
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
        self.accel
            .normalize(&image, layout, &mean, &std, out_layout)
    }
}
