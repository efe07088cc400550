//! The thin unsafe layer over Vulkan (ash): a device and its compute queue, storage buffers (device-local for
//! what the GPU reads every step, host-visible for what the host writes or reads back), compute pipelines of
//! the plan's SPIR-V, descriptor sets written once, and a stream that records launches separated by barriers
//! and submits them in one go — or keeps the recording as a [`Replay`] to submit again. Everything unsafe about Vulkan stays in this file; the executor above it is
//! safe code.
//!
//! Every object holds the device it was made on (reference-counted), so an executor can own its buffers and
//! pipelines side by side and drop them in any order. Errors are one line and say what was missing: no loader,
//! no device, a failed allocation with its size.

use ash::vk;
use std::ffi::CStr;
use std::sync::Arc;
use unicorn_ir::device::{create_instance, describe, load};
pub use unicorn_ir::device::{devices, DeviceInfo};
use unicorn_ir::plan::vulkan_abi::VALUES_BINDING;

pub type Result<T> = std::result::Result<T, String>;

fn vk_err(what: &str) -> impl Fn(vk::Result) -> String + '_ {
    move |e| format!("vulkan: {what}: {e}")
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

struct Inner {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    memory: vk::PhysicalDeviceMemoryProperties,
    info: DeviceInfo,
    /// [`Gpu::stage_device_buffers`].
    stage_device: std::sync::atomic::AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: every object made on the device holds an Arc of this, so none is alive; waiting for the
        // device first makes sure no submission still uses the pool.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// A logical device with one compute queue. Cheap to clone (shared).
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

/// Where a buffer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Device-local: what kernels read every step (weights, the KV cache, activations). On a GPU that shares
    /// the host's memory (integrated), host-visible too, so the host writes it in place. On a discrete GPU,
    /// memory the host cannot map, written through a staging copy by [`Buffer::write`]: a mappable
    /// device-local type there is the PCIe BAR window, which the driver may back differently from the rest
    /// of video memory.
    Device,
    /// Host-visible and coherent, mapped, preferably cached system memory: what the host writes or reads every
    /// step (token ids, logits).
    Host,
}

#[allow(clippy::type_complexity)]
fn open_on(
    entry: &ash::Entry,
    instance: &ash::Instance,
    index: usize,
) -> Result<(ash::Device, vk::Queue, vk::CommandPool, vk::PhysicalDeviceMemoryProperties, DeviceInfo)> {
    // SAFETY: the instance is valid.
    let pds = unsafe { instance.enumerate_physical_devices() }.map_err(vk_err("listing devices"))?;
    let Some(&pd) = pds.get(index) else {
        return Err(if pds.is_empty() {
            "vulkan: no Vulkan device found".to_string()
        } else {
            match pds.len() {
                1 => format!("vulkan: no device vulkan:{index} (this machine has one: vulkan:0)"),
                n => format!("vulkan: no device vulkan:{index} (this machine has {n}: vulkan:0 to vulkan:{})", n - 1),
            }
        });
    };
    // SAFETY: `pd` came from this instance.
    let families = unsafe { instance.get_physical_device_queue_family_properties(pd) };
    let family = families
        .iter()
        .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
        .ok_or_else(|| "vulkan: the device has no compute queue".to_string())? as u32;
    let priorities = [1.0];
    let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
    // The optional features the generated kernels may use, each enabled where the device has it: f16
    // arithmetic and the Vulkan memory model (cooperative-matrix kernels use both), cooperative matrices and
    // integer dot products.
    let mut has12 = vk::PhysicalDeviceVulkan12Features::default();
    let mut has_coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default();
    let mut info = describe(entry, instance, pd);
    let coop_ext = !info.cooperative_matrix.is_empty();
    {
        let mut query = vk::PhysicalDeviceFeatures2::default().push_next(&mut has12);
        if coop_ext {
            query = query.push_next(&mut has_coop);
        }
        // SAFETY: `pd` came from this instance; the chained structures are valid for writes.
        unsafe { instance.get_physical_device_features2(pd, &mut query) };
    }
    let mut want12 = vk::PhysicalDeviceVulkan12Features::default()
        .shader_float16(has12.shader_float16 == vk::TRUE)
        .vulkan_memory_model(has12.vulkan_memory_model == vk::TRUE)
        .vulkan_memory_model_device_scope(has12.vulkan_memory_model_device_scope == vk::TRUE);
    let mut want_coop = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default()
        .cooperative_matrix(has_coop.cooperative_matrix == vk::TRUE);
    let mut want_dot = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default().shader_integer_dot_product(true);
    let mut exts = Vec::new();
    let mut create = vk::DeviceCreateInfo::default().queue_create_infos(&queues).push_next(&mut want12);
    if coop_ext && has_coop.cooperative_matrix == vk::TRUE {
        exts.push(vk::KHR_COOPERATIVE_MATRIX_NAME.as_ptr());
        create = create.push_next(&mut want_coop);
    }
    // Integer dot products (the decode matmuls of quantized weights use them), where the device has them.
    if info.integer_dot {
        exts.push(vk::KHR_SHADER_INTEGER_DOT_PRODUCT_NAME.as_ptr());
        create = create.push_next(&mut want_dot);
    }
    create = create.enabled_extension_names(&exts);
    // SAFETY: the create info and what it points to live across the call.
    let device = unsafe { instance.create_device(pd, &create, None) }.map_err(vk_err("creating the device"))?;
    // SAFETY: the family was requested with one queue.
    let queue = unsafe { device.get_device_queue(family, 0) };
    let pool_info = vk::CommandPoolCreateInfo::default()
        .queue_family_index(family)
        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
    // SAFETY: the device is valid.
    let pool = match unsafe { device.create_command_pool(&pool_info, None) } {
        Ok(p) => p,
        Err(e) => {
            // SAFETY: nothing was made on the device.
            unsafe { device.destroy_device(None) };
            return Err(format!("vulkan: creating a command pool: {e}"));
        }
    };
    // SAFETY: as above.
    let memory = unsafe { instance.get_physical_device_memory_properties(pd) };
    if families[family as usize].timestamp_valid_bits == 0 {
        info.timestamp_period_ns = 0.0;
    }
    Ok((device, queue, pool, memory, info))
}

/// The memory types a buffer in `place` may take, in the order to try them, each with whether the host maps it.
/// `separate`: the device has memory of its own (a discrete or virtual GPU), not the host's.
///
/// - Device, separate memory: device-local types the host cannot map, then mappable device-local ones (the
///   BAR window, as a fallback when video memory proper is exhausted).
/// - Device, shared memory: mappable device-local types first (no staging copy), then any device-local type.
/// - Host: cached host-visible memory first (the host reads logits back from it every step, and a read
///   through a PCIe BAR is uncached and slow), then any host-visible coherent type; system memory before
///   device-local within each.
fn memory_candidates(types: &[vk::MemoryType], bits: u32, place: Place, separate: bool) -> Vec<(u32, bool)> {
    use vk::MemoryPropertyFlags as F;
    let host = F::HOST_VISIBLE | F::HOST_COHERENT;
    let local = |i: usize| types[i].property_flags.contains(F::DEVICE_LOCAL);
    // Types allowed by `bits` with all of `want`, device-local ones first (last with `local_last`).
    let with = |want: F, local_last: bool| -> Vec<u32> {
        let mut v: Vec<u32> = (0..types.len())
            .filter(|&i| bits & (1 << i) != 0 && types[i].property_flags.contains(want))
            .map(|i| i as u32)
            .collect();
        v.sort_by_key(|&i| local(i as usize) == local_last);
        v
    };
    let mappable = |i: u32| types[i as usize].property_flags.contains(host);
    let mut out: Vec<(u32, bool)> = Vec::new();
    match place {
        Place::Device if separate => {
            let all = with(F::DEVICE_LOCAL, false);
            out.extend(
                all.iter()
                    .filter(|&&i| !types[i as usize].property_flags.contains(F::HOST_VISIBLE))
                    .map(|&i| (i, false)),
            );
            out.extend(
                all.iter()
                    .filter(|&&i| types[i as usize].property_flags.contains(F::HOST_VISIBLE))
                    .map(|&i| (i, mappable(i))),
            );
        }
        Place::Device => {
            out.extend(with(F::DEVICE_LOCAL | host, false).into_iter().map(|i| (i, true)));
            out.extend(with(F::DEVICE_LOCAL, false).into_iter().map(|i| (i, mappable(i))));
        }
        Place::Host => {
            out.extend(with(host | F::HOST_CACHED, true).into_iter().map(|i| (i, true)));
            out.extend(with(host, true).into_iter().map(|i| (i, true)));
        }
    }
    let mut seen = 0u64;
    out.retain(|&(i, _)| {
        let new = seen & (1 << i) == 0;
        seen |= 1 << i;
        new
    });
    out
}

impl Gpu {
    /// Open device `index` (the loader's order) with a compute queue.
    pub fn open(index: usize) -> Result<Gpu> {
        let entry = load()?;
        let instance = create_instance(&entry)?;
        match open_on(&entry, &instance, index) {
            Ok((device, queue, pool, memory, info)) => {
                let stage_device = Default::default();
                let inner = Inner { _entry: entry, instance, device, queue, pool, memory, info, stage_device };
                Ok(Gpu { inner: Arc::new(inner) })
            }
            Err(e) => {
                // SAFETY: nothing created from the instance survived the failure.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// Make later [`Place::Device`] buffers unmapped even where their memory could be mapped, so every write
    /// to them and every read back goes through a staging copy, as on a discrete GPU. Tests use this to run
    /// that path on a device whose memory is all mappable (lavapipe, integrated GPUs).
    pub fn stage_device_buffers(&self, on: bool) {
        self.inner.stage_device.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// A host-visible, coherent, mapped storage buffer of `bytes` bytes, zeroed.
    pub fn buffer(&self, bytes: u64) -> Result<Buffer> {
        self.buffer_in(bytes, Place::Host)
    }

    /// A storage buffer of `bytes` bytes in `place`, zeroed.
    pub fn buffer_in(&self, bytes: u64, place: Place) -> Result<Buffer> {
        let size = bytes.max(4).next_multiple_of(4);
        let usage = vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST;
        let info = vk::BufferCreateInfo::default().size(size).usage(usage).sharing_mode(vk::SharingMode::EXCLUSIVE);
        let d = &self.inner.device;
        // SAFETY: the device is valid; every object made here is destroyed on each error path or by Drop.
        unsafe {
            let buffer = d.create_buffer(&info, None).map_err(|e| match e {
                // A size past what the device can back fails here already, on some drivers.
                vk::Result::ERROR_OUT_OF_DEVICE_MEMORY | vk::Result::ERROR_OUT_OF_HOST_MEMORY => {
                    format!("vulkan: out of device memory: {} needed for one buffer ({e})", mib(size))
                }
                e => vk_err("creating a buffer")(e),
            })?;
            let req = d.get_buffer_memory_requirements(buffer);
            let m = &self.inner.memory;
            let types = &m.memory_types[..m.memory_type_count as usize];
            let separate = matches!(self.inner.info.kind, "discrete" | "virtual");
            let mut candidates = memory_candidates(types, req.memory_type_bits, place, separate);
            if place == Place::Device && self.inner.stage_device.load(std::sync::atomic::Ordering::Relaxed) {
                candidates.iter_mut().for_each(|c| c.1 = false);
            }
            if candidates.is_empty() {
                d.destroy_buffer(buffer, None);
                return Err("vulkan: the device has no memory type for storage buffers".into());
            }
            let mut last = vk::Result::ERROR_OUT_OF_DEVICE_MEMORY;
            for (ty, mappable) in candidates {
                let alloc = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(ty);
                let memory = match d.allocate_memory(&alloc, None) {
                    Ok(m) => m,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                };
                if let Err(e) = d.bind_buffer_memory(buffer, memory, 0) {
                    d.free_memory(memory, None);
                    d.destroy_buffer(buffer, None);
                    return Err(format!("vulkan: binding a buffer's memory: {e}"));
                }
                let mut ptr = std::ptr::null_mut();
                if mappable {
                    match d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()) {
                        Ok(p) => ptr = p as *mut u8,
                        Err(e) => {
                            d.destroy_buffer(buffer, None);
                            d.free_memory(memory, None);
                            return Err(format!("vulkan: mapping a buffer: {e}"));
                        }
                    }
                }
                let b = Buffer { inner: self.inner.clone(), buffer, memory, ptr, size };
                if mappable {
                    std::ptr::write_bytes(ptr, 0, size as usize);
                } else {
                    self.fill_zero(&b)?;
                }
                return Ok(b);
            }
            d.destroy_buffer(buffer, None);
            Err(format!("vulkan: out of device memory: {} needed for one buffer ({last})", mib(size)))
        }
    }

    /// Run `record` on a one-time command buffer and wait for it.
    fn one_time(&self, record: impl FnOnce(vk::CommandBuffer)) -> Result<()> {
        let mut s = Stream::new(self, 0)?;
        s.begin()?;
        record(s.cb);
        s.submit_wait()
    }

    fn fill_zero(&self, b: &Buffer) -> Result<()> {
        // SAFETY: the command buffer is recording; the buffer is valid and idle.
        self.one_time(|cb| unsafe { self.inner.device.cmd_fill_buffer(cb, b.buffer, 0, vk::WHOLE_SIZE, 0) })
    }

    /// A compute pipeline of `spirv` (entry `entry`) with `bindings` storage buffers (bindings `0..bindings`,
    /// and the launch values at [`VALUES_BINDING`]) and `push_bytes` of push constants.
    pub fn kernel(&self, spirv: &[u32], entry: &CStr, bindings: u32, push_bytes: u32) -> Result<Kernel> {
        let d = &self.inner.device;
        if bindings > VALUES_BINDING {
            return Err(format!("vulkan: a kernel of {bindings} buffers (at most {VALUES_BINDING})"));
        }
        let layout_bindings: Vec<_> = (0..bindings)
            .chain([VALUES_BINDING])
            .map(|b| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            })
            .collect();
        let ranges = [vk::PushConstantRange::default().stage_flags(vk::ShaderStageFlags::COMPUTE).size(push_bytes)];
        // SAFETY: the device is valid and every create info lives across its call; objects are owned by the
        // returned Kernel (Drop destroys them, null handles included), and by nothing else.
        unsafe {
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&layout_bindings),
                    None,
                )
                .map_err(vk_err("creating a descriptor set layout"))?;
            let mut k = Kernel {
                inner: self.inner.clone(),
                set_layout,
                layout: vk::PipelineLayout::null(),
                module: vk::ShaderModule::null(),
                pipeline: vk::Pipeline::null(),
                bindings,
            };
            let layouts = [set_layout];
            let pl = vk::PipelineLayoutCreateInfo::default().set_layouts(&layouts).push_constant_ranges(&ranges);
            k.layout = d.create_pipeline_layout(&pl, None).map_err(vk_err("creating a pipeline layout"))?;
            k.module = d
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(spirv), None)
                .map_err(vk_err("creating a shader module"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(k.module)
                .name(entry);
            let info = [vk::ComputePipelineCreateInfo::default().stage(stage).layout(k.layout)];
            k.pipeline = d
                .create_compute_pipelines(vk::PipelineCache::null(), &info, None)
                .map_err(|(_, e)| format!("vulkan: creating a compute pipeline: {e}"))?[0];
            Ok(k)
        }
    }

    /// One descriptor set per entry, each binding a kernel's buffers in order (whole buffers) and `values` at
    /// [`VALUES_BINDING`], written once.
    pub fn sets(&self, entries: &[(&Kernel, &[&Buffer])], values: &Buffer) -> Result<Sets> {
        let d = &self.inner.device;
        for (k, bufs) in entries {
            if bufs.len() != k.bindings as usize {
                return Err(format!("vulkan: a launch binds {} buffers, its kernel {}", bufs.len(), k.bindings));
            }
        }
        let count: u32 = entries.iter().map(|(k, _)| k.bindings + 1).sum();
        let sizes =
            [vk::DescriptorPoolSize::default().ty(vk::DescriptorType::STORAGE_BUFFER).descriptor_count(count.max(1))];
        let info = vk::DescriptorPoolCreateInfo::default().max_sets(entries.len().max(1) as u32).pool_sizes(&sizes);
        // SAFETY: the device is valid; the pool is owned by the returned Sets, destroyed on the error path.
        unsafe {
            let pool = d.create_descriptor_pool(&info, None).map_err(vk_err("creating a descriptor pool"))?;
            let mut sets = Sets { inner: self.inner.clone(), pool, sets: Vec::new() };
            if entries.is_empty() {
                return Ok(sets);
            }
            let layouts: Vec<_> = entries.iter().map(|(k, _)| k.set_layout).collect();
            let handles = d
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default().descriptor_pool(pool).set_layouts(&layouts),
                )
                .map_err(vk_err("allocating descriptor sets"))?;
            let infos: Vec<Vec<[vk::DescriptorBufferInfo; 1]>> = entries
                .iter()
                .map(|(_, bufs)| {
                    bufs.iter()
                        .chain([&values])
                        .map(|b| [vk::DescriptorBufferInfo::default().buffer(b.buffer).offset(0).range(vk::WHOLE_SIZE)])
                        .collect()
                })
                .collect();
            let writes: Vec<_> = infos
                .iter()
                .zip(&handles)
                .flat_map(|(infos, &set)| {
                    let last = infos.len() - 1;
                    infos.iter().enumerate().map(move |(i, info)| {
                        vk::WriteDescriptorSet::default()
                            .dst_set(set)
                            .dst_binding(if i == last { VALUES_BINDING } else { i as u32 })
                            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                            .buffer_info(info)
                    })
                })
                .collect();
            d.update_descriptor_sets(&writes, &[]);
            sets.sets = handles.into_iter().map(SetRef).collect();
            Ok(sets)
        }
    }

    /// A command stream that can time up to `timestamps` launches.
    pub fn stream(&self, timestamps: u32) -> Result<Stream> {
        Stream::new(self, timestamps)
    }

    /// The device's memory bandwidth as kernels see it: a compute shader copying one device-local buffer of
    /// `bytes` into another (16-byte loads and stores, `copy.comp`), in GB/s (10^9 bytes) counting the bytes
    /// read and the bytes written; after a warm-up copy, as many copies in one submission as take about 0.2 s
    /// (at most 100), timed on the host. (`vkCmdCopyBuffer` goes through the copy engines, which on a large
    /// GPU move a fraction of what its shaders can.)
    pub fn copy_gb_s(&self, bytes: u64) -> Result<f64> {
        const SPIRV: &[u8] = include_bytes!("copy.spv");
        let words: Vec<u32> = SPIRV.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let kernel = self.kernel(&words, c"main", 2, 4)?;
        let bytes = bytes.next_multiple_of(16);
        let (a, b) = (self.buffer_in(bytes, Place::Device)?, self.buffer_in(bytes, Place::Device)?);
        let values = self.buffer_in(4, Place::Host)?;
        let sets = self.sets(&[(&kernel, &[&a, &b])], &values)?;
        let quads = u32::try_from(bytes / 16).map_err(|_| "vulkan: a copy of over 64 GiB".to_string())?;
        let groups = [quads.div_ceil(256).min(8192), 1, 1];
        let mut s = self.stream(0)?;
        let mut copies = |times: u32| -> Result<f64> {
            let t = std::time::Instant::now();
            s.begin()?;
            for _ in 0..times {
                s.dispatch(&kernel, sets.sets[0], &[quads], groups);
            }
            s.submit_wait()?;
            Ok(t.elapsed().as_secs_f64())
        };
        copies(1)?;
        let one = copies(1)?;
        let n = (0.2 / one.max(1e-9)).clamp(1.0, 100.0) as u32;
        let t = copies(n)?;
        Ok(2.0 * bytes as f64 * n as f64 / t / 1e9)
    }

    /// Run `launches` in order, each waiting for the writes of those before it, and wait for the device. Push
    /// word 1 of each launch is its position: `run` puts it in the launch values and pushes its index there.
    pub fn run(&self, launches: &[Launch<'_>]) -> Result<()> {
        let entries: Vec<(&Kernel, &[&Buffer])> = launches.iter().map(|l| (l.kernel, l.buffers)).collect();
        let positions: Vec<u8> =
            launches.iter().flat_map(|l| l.push.get(1).copied().unwrap_or(0).to_le_bytes()).collect();
        let mut values = self.buffer_in(positions.len().max(4) as u64, Place::Host)?;
        values.write(0, &positions)?;
        let sets = self.sets(&entries, &values)?;
        let mut s = self.stream(0)?;
        s.begin()?;
        for (i, (l, &set)) in launches.iter().zip(&sets.sets).enumerate() {
            let mut push = l.push.to_vec();
            if let Some(p) = push.get_mut(1) {
                *p = i as u32;
            }
            s.dispatch(l.kernel, set, &push, l.groups);
        }
        s.submit_wait()
    }
}

/// A storage buffer; mapped for its lifetime where its memory is host-visible.
pub struct Buffer {
    inner: Arc<Inner>,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    /// Null when the memory is not host-visible.
    ptr: *mut u8,
    size: u64,
}

/// Bytes per staging copy when a buffer is not host-visible.
const STAGING: u64 = 64 << 20;

impl Buffer {
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Whether the host reads and writes it in place.
    pub fn mapped(&self) -> bool {
        !self.ptr.is_null()
    }

    /// Copy `bytes` in at byte `offset` (in place, or through a staging buffer); panics past the end (a
    /// caller's bug).
    pub fn write(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        assert!(offset + bytes.len() as u64 <= self.size, "write past the end of a buffer");
        if self.mapped() {
            // SAFETY: the range is inside the mapping (checked), and no launch runs while `&mut self` is held.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset as usize), bytes.len()) };
            return Ok(());
        }
        let gpu = Gpu { inner: self.inner.clone() };
        let mut staging = gpu.buffer((bytes.len() as u64).min(STAGING))?;
        for (i, chunk) in bytes.chunks(STAGING as usize).enumerate() {
            staging.write(0, chunk)?;
            let region = [vk::BufferCopy::default()
                .src_offset(0)
                .dst_offset(offset + (i as u64) * STAGING)
                .size(chunk.len() as u64)];
            // SAFETY: both buffers are valid and idle; the regions lie inside them.
            gpu.one_time(|cb| unsafe { self.inner.device.cmd_copy_buffer(cb, staging.buffer, self.buffer, &region) })?;
        }
        Ok(())
    }

    /// [`Buffer::write`] of several `(offset, bytes)` regions: in place, or through one staging buffer and one
    /// submission for all of them where they fit one staging copy (region by region where not); panics past
    /// the end.
    pub fn write_regions(&mut self, regions: &[(u64, &[u8])]) -> Result<()> {
        let total: u64 = regions.iter().map(|r| r.1.len() as u64).sum();
        if self.mapped() || total > STAGING || regions.len() < 2 {
            return regions.iter().try_for_each(|&(offset, bytes)| self.write(offset, bytes));
        }
        let gpu = Gpu { inner: self.inner.clone() };
        let mut staging = gpu.buffer(total)?;
        let mut copies = Vec::with_capacity(regions.len());
        let mut at = 0;
        for &(offset, bytes) in regions {
            assert!(offset + bytes.len() as u64 <= self.size, "write past the end of a buffer");
            staging.write(at, bytes)?;
            copies.push(vk::BufferCopy::default().src_offset(at).dst_offset(offset).size(bytes.len() as u64));
            at += bytes.len() as u64;
        }
        // SAFETY: both buffers are valid and idle; every region lies inside them (checked above).
        gpu.one_time(|cb| unsafe { self.inner.device.cmd_copy_buffer(cb, staging.buffer, self.buffer, &copies) })
    }

    /// [`Buffer::fetch`] of several `(offset, len)` regions, one submission for all of them where they fit one
    /// staging copy; panics past the end.
    pub fn fetch_regions(&self, regions: &[(u64, u64)]) -> Result<Vec<Vec<u8>>> {
        let total: u64 = regions.iter().map(|r| r.1).sum();
        if self.mapped() || total > STAGING || regions.len() < 2 {
            return regions.iter().map(|&(offset, len)| self.fetch(offset, len)).collect();
        }
        let gpu = Gpu { inner: self.inner.clone() };
        let staging = gpu.buffer(total)?;
        let mut copies = Vec::with_capacity(regions.len());
        let mut at = 0;
        for &(offset, len) in regions {
            assert!(offset + len <= self.size, "read past the end of a buffer");
            copies.push(vk::BufferCopy::default().src_offset(offset).dst_offset(at).size(len));
            at += len;
        }
        // SAFETY: both buffers are valid and idle; every region lies inside them (checked above).
        gpu.one_time(|cb| unsafe { self.inner.device.cmd_copy_buffer(cb, self.buffer, staging.buffer, &copies) })?;
        let mut at = 0;
        Ok(regions
            .iter()
            .map(|&(_, len)| {
                let v = staging.read(at, len);
                at += len;
                v
            })
            .collect())
    }

    /// `len` bytes from byte `offset`, mapped or not (then through a staging copy); panics past the end.
    pub fn fetch(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        if self.mapped() {
            return Ok(self.read(offset, len));
        }
        assert!(offset + len <= self.size, "read past the end of a buffer");
        let gpu = Gpu { inner: self.inner.clone() };
        let mut out = Vec::with_capacity(len as usize);
        let staging = gpu.buffer(len.min(STAGING))?;
        while (out.len() as u64) < len {
            let n = (len - out.len() as u64).min(STAGING);
            let region = [vk::BufferCopy::default().src_offset(offset + out.len() as u64).dst_offset(0).size(n)];
            // SAFETY: both buffers are valid and idle; the regions lie inside them.
            gpu.one_time(|cb| unsafe { self.inner.device.cmd_copy_buffer(cb, self.buffer, staging.buffer, &region) })?;
            out.extend(staging.read(0, n));
        }
        Ok(out)
    }

    /// `len` bytes from byte `offset` of a mapped buffer; panics past the end or on an unmapped buffer.
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0; len as usize];
        self.read_into(offset, &mut v);
        v
    }

    /// Fill `out` from byte `offset` of a mapped buffer.
    pub fn read_into(&self, offset: u64, out: &mut [u8]) {
        assert!(self.mapped(), "reading a buffer the host cannot see");
        assert!(offset + out.len() as u64 <= self.size, "read past the end of a buffer");
        // SAFETY: inside the mapping; streams wait for the device and make its writes visible to the host.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset as usize), out.as_mut_ptr(), out.len()) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the buffer is not in use: streams wait for the device before they return.
        unsafe {
            self.inner.device.destroy_buffer(self.buffer, None);
            self.inner.device.free_memory(self.memory, None);
        }
    }
}

/// A compute pipeline and its layouts.
pub struct Kernel {
    inner: Arc<Inner>,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    module: vk::ShaderModule,
    pipeline: vk::Pipeline,
    bindings: u32,
}

impl Kernel {
    pub fn bindings(&self) -> u32 {
        self.bindings
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        let d = &self.inner.device;
        // SAFETY: not in use (see Buffer); destroying a null handle is allowed.
        unsafe {
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_shader_module(self.module, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

/// A descriptor set of a [`Sets`]; valid while the `Sets` lives and its buffers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetRef(vk::DescriptorSet);

/// Descriptor sets allocated and written together, freed together.
pub struct Sets {
    inner: Arc<Inner>,
    pool: vk::DescriptorPool,
    pub sets: Vec<SetRef>,
}

impl Drop for Sets {
    fn drop(&mut self) {
        // SAFETY: no submission that uses the sets is in flight (streams wait for the device).
        unsafe { self.inner.device.destroy_descriptor_pool(self.pool, None) }
    }
}

/// A command buffer recorded for a submission (or kept as a [`Replay`]), its fence, and optionally a timestamp
/// per launch.
pub struct Stream {
    inner: Arc<Inner>,
    cb: vk::CommandBuffer,
    fence: vk::Fence,
    queries: vk::QueryPool,
    capacity: u32,
    /// Launches recorded since `begin`.
    launches: u32,
    timing: bool,
}

impl Stream {
    fn new(gpu: &Gpu, timestamps: u32) -> Result<Stream> {
        let d = &gpu.inner.device;
        // SAFETY: the device is valid; the objects are owned by the Stream (Drop frees them, null included).
        unsafe {
            let cb = d
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default().command_pool(gpu.inner.pool).command_buffer_count(1),
                )
                .map_err(vk_err("allocating a command buffer"))?[0];
            let mut s = Stream {
                inner: gpu.inner.clone(),
                cb,
                fence: vk::Fence::null(),
                queries: vk::QueryPool::null(),
                capacity: 0,
                launches: 0,
                timing: false,
            };
            s.fence = d.create_fence(&vk::FenceCreateInfo::default(), None).map_err(vk_err("creating a fence"))?;
            if timestamps > 0 && gpu.inner.info.timestamp_period_ns > 0.0 {
                let info =
                    vk::QueryPoolCreateInfo::default().query_type(vk::QueryType::TIMESTAMP).query_count(timestamps + 1);
                s.queries = d.create_query_pool(&info, None).map_err(vk_err("creating a query pool"))?;
                s.capacity = timestamps;
            }
            Ok(s)
        }
    }

    /// Start recording; `timing` asks for a timestamp after each launch (where the stream has room for them).
    pub fn begin_timed(&mut self, timing: bool) -> Result<()> {
        let d = &self.inner.device;
        self.launches = 0;
        self.timing = timing && self.capacity > 0;
        // SAFETY: the command buffer is not pending (every submission is waited for).
        unsafe {
            d.reset_command_buffer(self.cb, vk::CommandBufferResetFlags::empty()).map_err(vk_err("recording"))?;
            // Not one-time: a recording may be kept and submitted again.
            d.begin_command_buffer(self.cb, &vk::CommandBufferBeginInfo::default()).map_err(vk_err("recording"))?;
            if self.timing {
                d.cmd_reset_query_pool(self.cb, self.queries, 0, self.capacity + 1);
                d.cmd_write_timestamp(self.cb, vk::PipelineStageFlags::TOP_OF_PIPE, self.queries, 0);
            }
        }
        Ok(())
    }

    pub fn begin(&mut self) -> Result<()> {
        self.begin_timed(false)
    }

    fn barrier(
        &self,
        src: vk::PipelineStageFlags,
        src_access: vk::AccessFlags,
        dst: vk::PipelineStageFlags,
        dst_access: vk::AccessFlags,
    ) {
        let b = [vk::MemoryBarrier::default().src_access_mask(src_access).dst_access_mask(dst_access)];
        // SAFETY: the command buffer is recording.
        unsafe { self.inner.device.cmd_pipeline_barrier(self.cb, src, dst, vk::DependencyFlags::empty(), &b, &[], &[]) }
    }

    /// Record one launch; it waits for every shader write recorded before it. `push` is at most the kernel's
    /// push-constant size in 32-bit words; the set must have been made for this kernel.
    pub fn dispatch(&mut self, kernel: &Kernel, set: SetRef, push: &[u32], groups: [u32; 3]) {
        let d = &self.inner.device;
        if self.launches > 0 {
            let rw = vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE;
            let cs = vk::PipelineStageFlags::COMPUTE_SHADER;
            self.barrier(cs, vk::AccessFlags::SHADER_WRITE, cs, rw);
        }
        // Push constants are at most 128 bytes on every device: staged on the stack, not allocated per launch.
        let mut staged = [0u8; 128];
        let n = (push.len() * 4).min(staged.len());
        for (dst, w) in staged[..n].chunks_exact_mut(4).zip(push) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        let bytes = &staged[..n];
        // SAFETY: the command buffer is recording; kernel and set are valid and outlive the submission (the
        // caller keeps them until `submit_wait` returns).
        unsafe {
            d.cmd_bind_pipeline(self.cb, vk::PipelineBindPoint::COMPUTE, kernel.pipeline);
            d.cmd_bind_descriptor_sets(self.cb, vk::PipelineBindPoint::COMPUTE, kernel.layout, 0, &[set.0], &[]);
            d.cmd_push_constants(self.cb, kernel.layout, vk::ShaderStageFlags::COMPUTE, 0, bytes);
            d.cmd_dispatch(self.cb, groups[0], groups[1], groups[2]);
        }
        self.launches += 1;
        if self.timing && self.launches <= self.capacity {
            // SAFETY: query `launches` is inside the pool and was reset in `begin`.
            unsafe {
                d.cmd_write_timestamp(self.cb, vk::PipelineStageFlags::BOTTOM_OF_PIPE, self.queries, self.launches)
            };
        }
    }

    /// Record a copy of `len` bytes between buffers, after every launch recorded so far.
    pub fn copy(&mut self, src: &Buffer, src_offset: u64, dst: &Buffer, dst_offset: u64, len: u64) {
        let cs = vk::PipelineStageFlags::COMPUTE_SHADER;
        self.barrier(
            cs,
            vk::AccessFlags::SHADER_WRITE,
            vk::PipelineStageFlags::TRANSFER,
            vk::AccessFlags::TRANSFER_READ,
        );
        let region = [vk::BufferCopy::default().src_offset(src_offset).dst_offset(dst_offset).size(len)];
        // SAFETY: recording; both buffers are valid, and the caller keeps them until `submit_wait` returns.
        unsafe { self.inner.device.cmd_copy_buffer(self.cb, src.buffer, dst.buffer, &region) }
    }

    /// End the recording, its last commands' writes made visible to the host.
    fn end(&mut self) -> Result<()> {
        self.barrier(
            vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
            vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE,
            vk::PipelineStageFlags::HOST,
            vk::AccessFlags::HOST_READ,
        );
        // SAFETY: the command buffer is recording.
        unsafe { self.inner.device.end_command_buffer(self.cb) }.map_err(vk_err("recording"))
    }

    /// Submit command buffer `cb` and wait for it (the fence is unsignalled: reset after each wait).
    fn submit_cb(&self, cb: vk::CommandBuffer) -> Result<()> {
        let d = &self.inner.device;
        // SAFETY: `cb` is recorded and not pending (every submission is waited for); the call waits.
        unsafe {
            let cbs = [cb];
            let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
            d.queue_submit(self.inner.queue, &submit, self.fence).map_err(vk_err("submitting"))?;
            let waited = d.wait_for_fences(&[self.fence], true, u64::MAX).map_err(vk_err("waiting for the device"));
            d.reset_fences(&[self.fence]).map_err(vk_err("resetting a fence"))?;
            waited
        }
    }

    /// Submit what was recorded and wait for the device; its writes are then visible to the host.
    pub fn submit_wait(&mut self) -> Result<()> {
        self.end()?;
        self.submit_cb(self.cb)
    }

    /// End what was recorded and keep it, to submit as often as wanted with [`Stream::replay`]; the stream goes
    /// on with a new command buffer. The recording reads the buffers and sets it was recorded with at each
    /// replay, so the caller keeps those alive and unchanged in layout while it keeps the `Replay` (the values
    /// in them may change between replays: that is the point).
    pub fn keep(&mut self) -> Result<Replay> {
        self.end()?;
        let d = &self.inner.device;
        // SAFETY: the device and pool are valid; the new buffer replaces the kept one, which the Replay frees.
        let fresh = unsafe {
            d.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default().command_pool(self.inner.pool).command_buffer_count(1),
            )
        }
        .map_err(vk_err("allocating a command buffer"))?[0];
        let cb = std::mem::replace(&mut self.cb, fresh);
        Ok(Replay { inner: self.inner.clone(), cb, launches: self.launches })
    }

    /// Submit a kept recording again and wait for the device. It was recorded without timestamps.
    pub fn replay(&mut self, r: &Replay) -> Result<()> {
        self.timing = false;
        self.launches = r.launches;
        self.submit_cb(r.cb)
    }

    /// Seconds each launch of the last timed submission took (from the end of the one before it).
    pub fn launch_seconds(&self) -> Vec<f64> {
        if !self.timing {
            return Vec::new();
        }
        let n = self.launches.min(self.capacity) as usize;
        let mut ticks = vec![0u64; n + 1];
        // SAFETY: the submission was waited for, so the queries are available; the slice holds n + 1 values.
        let ok = unsafe {
            self.inner.device.get_query_pool_results(self.queries, 0, &mut ticks, vk::QueryResultFlags::TYPE_64)
        };
        if ok.is_err() {
            return Vec::new();
        }
        let ns = self.inner.info.timestamp_period_ns as f64;
        ticks.windows(2).map(|w| w[1].saturating_sub(w[0]) as f64 * ns * 1e-9).collect()
    }
}

/// A recorded command buffer kept for submission again ([`Stream::keep`]).
pub struct Replay {
    inner: Arc<Inner>,
    cb: vk::CommandBuffer,
    launches: u32,
}

impl Drop for Replay {
    fn drop(&mut self) {
        // SAFETY: not pending: every replay is waited for.
        unsafe { self.inner.device.free_command_buffers(self.inner.pool, &[self.cb]) }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let d = &self.inner.device;
        // SAFETY: no submission is pending (each is waited for); null handles may be destroyed.
        unsafe {
            d.destroy_query_pool(self.queries, None);
            d.destroy_fence(self.fence, None);
            d.free_command_buffers(self.inner.pool, &[self.cb]);
        }
    }
}

/// One dispatch for [`Gpu::run`]: a kernel, its buffers in binding order, its push constants, its workgroups.
pub struct Launch<'a> {
    pub kernel: &'a Kernel,
    pub buffers: &'a [&'a Buffer],
    pub push: &'a [u32],
    pub groups: [u32; 3],
}

#[cfg(test)]
mod tests {
    use super::*;
    use vk::MemoryPropertyFlags as F;

    fn table(flags: &[F]) -> Vec<vk::MemoryType> {
        flags.iter().map(|&f| vk::MemoryType { property_flags: f, heap_index: 0 }).collect()
    }

    /// A discrete GPU's types as NVIDIA's driver lists them: video memory, system memory (uncached and
    /// cached), and the BAR window into video memory.
    fn discrete() -> Vec<vk::MemoryType> {
        let host = F::HOST_VISIBLE | F::HOST_COHERENT;
        table(&[F::empty(), F::DEVICE_LOCAL, host, host | F::HOST_CACHED, F::DEVICE_LOCAL | host])
    }

    #[test]
    fn discrete_gpus_keep_device_buffers_out_of_the_bar_window() {
        let t = discrete();
        assert_eq!(memory_candidates(&t, !0, Place::Device, true), vec![(1, false), (4, true)]);
        // A type the buffer may not use is never offered.
        assert_eq!(memory_candidates(&t, 1 << 4, Place::Device, true), vec![(4, true)]);
        // Host buffers: cached system memory, then uncached, then the BAR window last.
        assert_eq!(memory_candidates(&t, !0, Place::Host, true), vec![(3, true), (2, true), (4, true)]);
    }

    #[test]
    fn shared_memory_devices_map_device_buffers() {
        // An integrated GPU (RADV on a Ryzen APU): every device-local type is also mappable but one.
        let host = F::HOST_VISIBLE | F::HOST_COHERENT;
        let t = table(&[F::DEVICE_LOCAL, host, F::DEVICE_LOCAL | host, host | F::HOST_CACHED]);
        assert_eq!(memory_candidates(&t, !0, Place::Device, false), vec![(2, true), (0, false)]);
        assert_eq!(memory_candidates(&t, !0, Place::Host, false), vec![(3, true), (1, true), (2, true)]);
        // lavapipe: one type that is everything.
        let t = table(&[F::DEVICE_LOCAL | host | F::HOST_CACHED]);
        assert_eq!(memory_candidates(&t, !0, Place::Device, false), vec![(0, true)]);
        assert_eq!(memory_candidates(&t, !0, Place::Host, false), vec![(0, true)]);
    }

    #[test]
    fn no_usable_type_gives_no_candidates() {
        assert!(memory_candidates(&discrete(), 1, Place::Device, true).is_empty());
        assert!(memory_candidates(&discrete(), 1 << 1, Place::Host, true).is_empty());
    }
}
