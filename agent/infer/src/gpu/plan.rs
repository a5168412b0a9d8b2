//! A [`Program`] made real on a device: pipelines, parameter buffers and weights shared by every
//! run, and a pool of instances that each own the activation buffers (assigned by liveness, so
//! buffers are reused along the graph) and their bind groups.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::InferError;
use crate::gpu::context::{GpuContext, PassTimer};
use crate::gpu::program::{BufferKind, Program, Word};
use crate::tensor::{DType, Tensor};

/// Weight buffers by content, shared by every plan of a model.
pub type WeightCache = Mutex<HashMap<(u64, usize), Arc<wgpu::Buffer>>>;

/// Instances kept for reuse; more concurrent runs than this build their own.
const MAX_POOLED_INSTANCES: usize = 4;

#[derive(Debug)]
pub struct Plan {
    context: Arc<GpuContext>,
    program: Program,
    pipelines: Vec<Arc<wgpu::ComputePipeline>>,
    params: Vec<wgpu::Buffer>,
    /// Per virtual buffer: the shared weight buffer, for weights.
    weights: Vec<Option<Arc<wgpu::Buffer>>>,
    instances: Mutex<Vec<Instance>>,
}

#[derive(Debug)]
struct Instance {
    /// Per virtual buffer, the physical buffer.
    buffers: Vec<Arc<wgpu::Buffer>>,
    bind_groups: Vec<wgpu::BindGroup>,
    staging: Vec<wgpu::Buffer>,
    /// Times the model's pass, for the GPU's busy time.
    timer: Option<PassTimer>,
}

fn content_key(words: &[u32]) -> (u64, usize) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    words.hash(&mut h);
    (h.finish(), words.len())
}

const ACTIVATION_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

impl Plan {
    pub fn new(
        context: Arc<GpuContext>,
        program: Program,
        cache: &WeightCache,
    ) -> Result<Plan, InferError> {
        let device = &context.device;
        let limit = context.max_binding_bytes();
        for b in &program.buffers {
            if (b.words as u64) * 4 > limit {
                return Err(InferError::Unsupported {
                    what: format!(
                        "a tensor of {} bytes is over the adapter's binding limit of {limit}",
                        b.words * 4
                    ),
                });
            }
        }
        let pipelines = program
            .steps
            .iter()
            .map(|s| context.pipeline(s.kernel))
            .collect();
        let params = program
            .steps
            .iter()
            .map(|s| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: bytemuck::cast_slice(&s.params),
                    usage: wgpu::BufferUsages::STORAGE,
                })
            })
            .collect();
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let weights = program
            .buffers
            .iter()
            .map(|b| match &b.kind {
                BufferKind::Weight { words } => Some(
                    cache
                        .entry(content_key(words))
                        .or_insert_with(|| {
                            // COPY_SRC: a model output can be a constant.
                            let contents: &[u32] = if words.is_empty() { &[0] } else { words };
                            Arc::new(
                                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                                    label: Some("weights"),
                                    contents: bytemuck::cast_slice(contents),
                                    usage: wgpu::BufferUsages::STORAGE
                                        | wgpu::BufferUsages::COPY_SRC,
                                }),
                            )
                        })
                        .clone(),
                ),
                _ => None,
            })
            .collect();
        drop(cache);
        let plan = Plan {
            context,
            program,
            pipelines,
            params,
            weights,
            instances: Mutex::new(Vec::new()),
        };
        let first = plan.instance();
        plan.instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(first);
        Ok(plan)
    }

    /// A new instance: activation buffers assigned by liveness, bind groups, readback buffers.
    fn instance(&self) -> Instance {
        let device = &self.context.device;
        let program = &self.program;
        let n = program.buffers.len();
        let mut first = vec![usize::MAX; n];
        let mut last = vec![0usize; n];
        for (i, step) in program.steps.iter().enumerate() {
            for &b in &step.buffers {
                first[b] = first[b].min(i);
                last[b] = last[b].max(i);
            }
        }
        for out in &program.outputs {
            last[out.buffer] = usize::MAX;
        }
        let create = |words: usize| {
            Arc::new(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("activation"),
                size: (words.max(1) * 4) as u64,
                usage: ACTIVATION_USAGE,
                mapped_at_creation: false,
            }))
        };
        let mut physical: Vec<Option<Arc<wgpu::Buffer>>> = vec![None; n];
        for (b, spec) in program.buffers.iter().enumerate() {
            match &spec.kind {
                BufferKind::Weight { .. } => physical[b] = self.weights[b].clone(),
                BufferKind::Input { .. } => physical[b] = Some(create(spec.words)),
                BufferKind::Activation if first[b] == usize::MAX => {
                    physical[b] = Some(create(spec.words))
                }
                BufferKind::Activation => {}
            }
        }
        // Activations: assign at first use, release after last use, reuse the smallest free
        // buffer that fits.
        let mut free: Vec<Arc<wgpu::Buffer>> = vec![];
        for (i, step) in program.steps.iter().enumerate() {
            for &b in &step.buffers {
                if physical[b].is_none() {
                    let need = (program.buffers[b].words * 4) as u64;
                    let pick = free
                        .iter()
                        .enumerate()
                        .filter(|(_, buf)| buf.size() >= need)
                        .min_by_key(|(_, buf)| buf.size())
                        .map(|(j, _)| j);
                    physical[b] = Some(match pick {
                        Some(j) => free.swap_remove(j),
                        None => create(program.buffers[b].words),
                    });
                }
            }
            for &b in &step.buffers {
                if last[b] == i && matches!(program.buffers[b].kind, BufferKind::Activation) {
                    if let Some(buf) = physical[b].clone()
                        && !free.iter().any(|f| Arc::ptr_eq(f, &buf))
                    {
                        free.push(buf);
                    }
                    last[b] = usize::MAX - 1;
                }
            }
        }
        let buffers: Vec<Arc<wgpu::Buffer>> = physical
            .into_iter()
            .map(|b| b.unwrap_or_else(|| create(1)))
            .collect();
        let bind_groups = program
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let layout = self.pipelines[i].get_bind_group_layout(0);
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: self.params[i].as_entire_binding(),
                }];
                for (slot, &b) in step.buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: slot as u32 + 1,
                        resource: buffers[b].as_entire_binding(),
                    });
                }
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(step.kernel.label()),
                    layout: &layout,
                    entries: &entries,
                })
            })
            .collect();
        let staging = program
            .outputs
            .iter()
            .map(|o| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size: (o.shape.iter().product::<usize>().max(1) * 4) as u64,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })
            .collect();
        Instance {
            buffers,
            bind_groups,
            staging,
            timer: self.context.pass_timer(),
        }
    }

    /// Runs the plan: inputs in the program's order, already checked against the model.
    pub fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError> {
        let pooled = self
            .instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let instance = match pooled {
            Some(i) => i,
            None => self.instance(),
        };
        let result = self.run_on(&instance, inputs);
        let mut pool = self
            .instances
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < MAX_POOLED_INSTANCES {
            pool.push(instance);
        }
        result
    }

    /// Time of the dispatches alone (no transfers): `repeats` runs recorded back to back into one
    /// command buffer, the wall time divided by `repeats`. For benchmarks.
    pub fn time_dispatches(
        &self,
        inputs: &[Tensor],
        repeats: usize,
    ) -> Result<std::time::Duration, InferError> {
        let instance = self.instance();
        self.run_on(&instance, inputs)?;
        let ctx = &self.context;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("timing"),
            });
        for _ in 0..repeats.max(1) {
            self.record(&mut encoder, &instance, None);
        }
        let commands = encoder.finish();
        let start = std::time::Instant::now();
        ctx.queue.submit([commands]);
        ctx.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| InferError::Run(format!("waiting for the GPU: {e}")))?;
        Ok(start.elapsed() / repeats.max(1) as u32)
    }

    /// Records every dispatch of one run into one compute pass.
    fn record(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        instance: &Instance,
        timer: Option<&PassTimer>,
    ) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("model"),
            timestamp_writes: timer.map(PassTimer::writes),
        });
        for (i, step) in self.program.steps.iter().enumerate() {
            pass.set_pipeline(&self.pipelines[i]);
            pass.set_bind_group(0, &instance.bind_groups[i], &[]);
            pass.dispatch_workgroups(step.grid.0, step.grid.1, step.grid.2);
        }
    }

    fn run_on(&self, instance: &Instance, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError> {
        let ctx = &self.context;
        for spec in &self.program.inputs {
            let tensor = inputs.get(spec.index).ok_or_else(|| {
                InferError::Internal(format!("no tensor for input {}", spec.index))
            })?;
            let words = to_words(tensor)?;
            if !words.is_empty() {
                ctx.queue.write_buffer(
                    &instance.buffers[spec.buffer],
                    0,
                    bytemuck::cast_slice(&words),
                );
            }
        }
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("model"),
            });
        self.record(&mut encoder, instance, instance.timer.as_ref());
        if let Some(timer) = &instance.timer {
            timer.resolve(&mut encoder);
        }
        for (out, staging) in self.program.outputs.iter().zip(&instance.staging) {
            encoder.copy_buffer_to_buffer(
                &instance.buffers[out.buffer],
                0,
                staging,
                0,
                staging.size(),
            );
        }
        ctx.queue.submit([encoder.finish()]);
        let mut staging: Vec<&wgpu::Buffer> = instance.staging.iter().collect();
        staging.extend(instance.timer.as_ref().map(|t| &t.staging));
        let mut results = ctx.read_back(&staging).map_err(InferError::Run)?;
        if instance.timer.is_some()
            && let Some(timestamps) = results.pop()
        {
            ctx.add_busy(&timestamps);
        }
        let mut outputs = Vec::with_capacity(self.program.outputs.len());
        for (out, words) in self.program.outputs.iter().zip(&results) {
            let n: usize = out.shape.iter().product();
            outputs.push(from_words(&words[..n], out.word, out.dtype, &out.shape)?);
        }
        Ok(outputs)
    }
}

/// Host tensor → GPU words.
fn to_words(t: &Tensor) -> Result<Vec<u32>, InferError> {
    let d = &t.data;
    let bad = |why: &str| InferError::BadInput {
        name: t.name.clone(),
        reason: why.to_owned(),
    };
    Ok(match t.dtype {
        DType::F32 | DType::I32 => d
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::I64 => d
            .chunks_exact(8)
            .map(|c| {
                let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                i32::try_from(v).map(|v| v as u32)
            })
            .collect::<Result<_, _>>()
            .map_err(|_| bad("int64 values must fit 32 bits on the GPU"))?,
        DType::F64 => d
            .chunks_exact(8)
            .map(|c| {
                (f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                    .to_bits()
            })
            .collect(),
        DType::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32().to_bits())
            .collect(),
        DType::U8 | DType::Bool => d.iter().map(|&b| u32::from(b)).collect(),
        DType::I8 => d.iter().map(|&b| i32::from(b as i8) as u32).collect(),
        DType::I16 => d
            .chunks_exact(2)
            .map(|c| i32::from(i16::from_le_bytes([c[0], c[1]])) as u32)
            .collect(),
        DType::U16 => d
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => return Err(bad(&format!("{other} inputs are not supported on the GPU"))),
    })
}

/// GPU words → host tensor of `dtype`.
fn from_words(
    words: &[u32],
    word: Word,
    dtype: DType,
    shape: &[usize],
) -> Result<Tensor, InferError> {
    let mut data = Vec::with_capacity(words.len() * dtype.size());
    for &w in words {
        let f = || -> f64 {
            match word {
                Word::F32 => f64::from(f32::from_bits(w)),
                Word::I32 => f64::from(w as i32),
                Word::Bool => f64::from(w),
            }
        };
        let i = || -> i64 {
            match word {
                Word::F32 => f32::from_bits(w) as i64,
                Word::I32 => i64::from(w as i32),
                Word::Bool => i64::from(w),
            }
        };
        match dtype {
            DType::F32 => data.extend((f() as f32).to_le_bytes()),
            DType::F64 => data.extend(f().to_le_bytes()),
            DType::F16 => data.extend(half::f16::from_f64(f()).to_le_bytes()),
            DType::I64 => data.extend(i().to_le_bytes()),
            DType::U64 => data.extend((i() as u64).to_le_bytes()),
            DType::I32 => data.extend((i() as i32).to_le_bytes()),
            DType::U32 => data.extend((i() as u32).to_le_bytes()),
            DType::I16 => data.extend((i() as i16).to_le_bytes()),
            DType::U16 => data.extend((i() as u16).to_le_bytes()),
            DType::I8 => data.push(i() as i8 as u8),
            DType::U8 => data.push(i() as u8),
            DType::Bool => data.push(u8::from(i() != 0)),
        }
    }
    Ok(Tensor {
        name: String::new(),
        dtype,
        shape: shape.to_vec(),
        data,
    })
}
