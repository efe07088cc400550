//! The thin unsafe layer over Vulkan (ash): a device and its compute queue, host-visible storage buffers,
//! compute pipelines of the plan's SPIR-V, and a submission of launches separated by barriers. Everything
//! unsafe about Vulkan stays in this file; the executor above it is safe code.
//!
//! Errors are one line and say what was missing: no loader, no device, a failed allocation with its size.

use ash::vk;
use std::ffi::CStr;

pub type Result<T> = std::result::Result<T, String>;

fn vk_err(what: &str) -> impl Fn(vk::Result) -> String + '_ {
    move |e| format!("vulkan: {what}: {e}")
}

/// What a physical device offers, for `--list-devices` and for choosing kernels.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub device_local_bytes: u64,
    pub subgroup_size: u32,
    pub max_storage_buffer_range: u32,
    pub min_storage_buffer_offset_alignment: u64,
    pub max_workgroup_count: [u32; 3],
}

/// A logical device with one compute queue.
pub struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    queue: vk::Queue,
    pool: vk::CommandPool,
    memory: vk::PhysicalDeviceMemoryProperties,
    pub info: DeviceInfo,
}

/// The Vulkan loader, or a one-line error naming the library it looked for.
fn load() -> Result<ash::Entry> {
    // SAFETY: loading libvulkan runs its initialisers; the loader is a system library meant to be loaded so.
    unsafe { ash::Entry::load() }
        .map_err(|e| format!("vulkan: no Vulkan loader ({e}); install libvulkan1 and a driver (mesa-vulkan-drivers)"))
}

fn create_instance(entry: &ash::Entry) -> Result<ash::Instance> {
    let app = vk::ApplicationInfo::default().application_name(c"unicorn").api_version(vk::API_VERSION_1_2);
    let info = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: the create info and what it points to live across the call.
    unsafe { entry.create_instance(&info, None) }.map_err(vk_err("creating an instance"))
}

fn describe(instance: &ash::Instance, pd: vk::PhysicalDevice) -> DeviceInfo {
    let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
    let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
    // SAFETY: `pd` came from this instance; the out-structures are valid for writes.
    unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
    let p = props2.properties;
    // SAFETY: as above.
    let mem = unsafe { instance.get_physical_device_memory_properties(pd) };
    let device_local_bytes = mem.memory_heaps[..mem.memory_heap_count as usize]
        .iter()
        .filter(|h| h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
        .map(|h| h.size)
        .sum();
    DeviceInfo {
        name: p.device_name_as_c_str().ok().and_then(|c| c.to_str().ok()).unwrap_or("?").to_string(),
        device_local_bytes,
        subgroup_size: subgroup.subgroup_size,
        max_storage_buffer_range: p.limits.max_storage_buffer_range,
        min_storage_buffer_offset_alignment: p.limits.min_storage_buffer_offset_alignment,
        max_workgroup_count: p.limits.max_compute_work_group_count,
    }
}

/// Every Vulkan device of this machine, in the loader's order (what `vulkan:N` counts).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let entry = load()?;
    let instance = create_instance(&entry)?;
    // SAFETY: the instance is valid; it is destroyed after its devices are described.
    let list = unsafe { instance.enumerate_physical_devices() }.map_err(vk_err("listing devices"));
    let out = list.map(|pds| pds.into_iter().map(|pd| describe(&instance, pd)).collect());
    // SAFETY: nothing created from the instance outlives this point.
    unsafe { instance.destroy_instance(None) };
    out
}

impl Gpu {
    /// Open device `index` (the loader's order) with a compute queue.
    pub fn open(index: usize) -> Result<Gpu> {
        let entry = load()?;
        let instance = create_instance(&entry)?;
        match Self::open_on(&instance, index) {
            Ok((device, queue, pool, memory, info)) => {
                Ok(Gpu { _entry: entry, instance, device, queue, pool, memory, info })
            }
            Err(e) => {
                // SAFETY: nothing created from the instance survived the failure.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn open_on(
        instance: &ash::Instance,
        index: usize,
    ) -> Result<(ash::Device, vk::Queue, vk::CommandPool, vk::PhysicalDeviceMemoryProperties, DeviceInfo)> {
        // SAFETY: the instance is valid.
        let pds = unsafe { instance.enumerate_physical_devices() }.map_err(vk_err("listing devices"))?;
        let Some(&pd) = pds.get(index) else {
            return Err(if pds.is_empty() {
                "vulkan: no Vulkan device found".to_string()
            } else {
                format!("vulkan: no device vulkan:{index} (this machine has {})", pds.len())
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
        let info = vk::DeviceCreateInfo::default().queue_create_infos(&queues);
        // SAFETY: the create info and what it points to live across the call.
        let device = unsafe { instance.create_device(pd, &info, None) }.map_err(vk_err("creating the device"))?;
        // SAFETY: the family was requested with one queue.
        let queue = unsafe { device.get_device_queue(family, 0) };
        let pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: the device is valid.
        let pool =
            unsafe { device.create_command_pool(&pool_info, None) }.map_err(vk_err("creating a command pool"))?;
        // SAFETY: as above.
        let memory = unsafe { instance.get_physical_device_memory_properties(pd) };
        Ok((device, queue, pool, memory, describe(instance, pd)))
    }

    /// A memory type for `bits` with all of `want`, preferring device-local ones.
    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Option<u32> {
        let types = &self.memory.memory_types[..self.memory.memory_type_count as usize];
        let fits = |i: usize, t: &vk::MemoryType| bits & (1 << i) != 0 && t.property_flags.contains(want);
        let local = vk::MemoryPropertyFlags::DEVICE_LOCAL;
        let pick = |need_local: bool| {
            types.iter().enumerate().position(|(i, t)| fits(i, t) && (!need_local || t.property_flags.contains(local)))
        };
        pick(true).or_else(|| pick(false)).map(|i| i as u32)
    }

    /// A host-visible, coherent storage buffer of `bytes` bytes, zeroed.
    pub fn buffer(&self, bytes: u64) -> Result<Buffer<'_>> {
        let size = bytes.max(4).next_multiple_of(4);
        let info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        let d = &self.device;
        // SAFETY: the device is valid; every object made here is destroyed on each error path or by Drop.
        unsafe {
            let buffer = d.create_buffer(&info, None).map_err(vk_err("creating a buffer"))?;
            let req = d.get_buffer_memory_requirements(buffer);
            let want = vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let Some(ty) = self.memory_type(req.memory_type_bits, want) else {
                d.destroy_buffer(buffer, None);
                return Err("vulkan: the device has no host-visible memory for storage buffers".into());
            };
            let alloc = vk::MemoryAllocateInfo::default().allocation_size(req.size).memory_type_index(ty);
            let memory = match d.allocate_memory(&alloc, None) {
                Ok(m) => m,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    return Err(format!("vulkan: out of device memory: {} MiB needed ({e})", req.size >> 20));
                }
            };
            let mapped = d
                .bind_buffer_memory(buffer, memory, 0)
                .and_then(|()| d.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty()));
            let ptr = match mapped {
                Ok(p) => p as *mut u8,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    d.free_memory(memory, None);
                    return Err(format!("vulkan: mapping a buffer: {e}"));
                }
            };
            std::ptr::write_bytes(ptr, 0, size as usize);
            Ok(Buffer { gpu: self, buffer, memory, ptr, size })
        }
    }

    /// A compute pipeline of `spirv` (entry `entry`) with `bindings` storage buffers and `push_bytes` of push
    /// constants.
    pub fn kernel(&self, spirv: &[u32], entry: &CStr, bindings: u32, push_bytes: u32) -> Result<Kernel<'_>> {
        let d = &self.device;
        let layout_bindings: Vec<_> = (0..bindings)
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
        // returned Kernel (Drop destroys them), and by nothing else.
        unsafe {
            let set_layout = d
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&layout_bindings),
                    None,
                )
                .map_err(vk_err("creating a descriptor set layout"))?;
            let mut k = Kernel {
                gpu: self,
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

    /// Run `launches` in order, each waiting for the writes of those before it, and wait for the device.
    pub fn run(&self, launches: &[Launch<'_, '_>]) -> Result<()> {
        let d = &self.device;
        let sets = launches.len() as u32;
        let sizes = [vk::DescriptorPoolSize::default()
            .ty(vk::DescriptorType::STORAGE_BUFFER)
            .descriptor_count(launches.iter().map(|l| l.kernel.bindings).sum::<u32>().max(1))];
        // SAFETY: the device is valid; the pool, its sets, the command buffer and the fence are made and freed
        // here; every buffer and kernel a launch names outlives the call (borrowed), and the call waits for
        // the device before it returns.
        unsafe {
            let pool = d
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default().max_sets(sets.max(1)).pool_sizes(&sizes),
                    None,
                )
                .map_err(vk_err("creating a descriptor pool"))?;
            let result = self.record_and_submit(pool, launches);
            d.destroy_descriptor_pool(pool, None);
            result
        }
    }

    unsafe fn record_and_submit(&self, pool: vk::DescriptorPool, launches: &[Launch<'_, '_>]) -> Result<()> {
        let d = &self.device;
        let layouts: Vec<_> = launches.iter().map(|l| l.kernel.set_layout).collect();
        let sets = if layouts.is_empty() {
            Vec::new()
        } else {
            d.allocate_descriptor_sets(
                &vk::DescriptorSetAllocateInfo::default().descriptor_pool(pool).set_layouts(&layouts),
            )
            .map_err(vk_err("allocating descriptor sets"))?
        };
        for (l, &set) in launches.iter().zip(&sets) {
            if l.buffers.len() != l.kernel.bindings as usize {
                return Err(format!(
                    "vulkan: a launch binds {} buffers, its kernel {}",
                    l.buffers.len(),
                    l.kernel.bindings
                ));
            }
            let infos: Vec<_> = l
                .buffers
                .iter()
                .map(|b| [vk::DescriptorBufferInfo::default().buffer(b.buffer).offset(0).range(vk::WHOLE_SIZE)])
                .collect();
            let writes: Vec<_> = infos
                .iter()
                .enumerate()
                .map(|(i, info)| {
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(i as u32)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(info)
                })
                .collect();
            d.update_descriptor_sets(&writes, &[]);
        }
        let cb = d
            .allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default().command_pool(self.pool).command_buffer_count(1),
            )
            .map_err(vk_err("allocating a command buffer"))?[0];
        let fence = d.create_fence(&vk::FenceCreateInfo::default(), None).map_err(vk_err("creating a fence"));
        let fence = match fence {
            Ok(f) => f,
            Err(e) => {
                d.free_command_buffers(self.pool, &[cb]);
                return Err(e);
            }
        };
        let result = (|| {
            d.begin_command_buffer(cb, &vk::CommandBufferBeginInfo::default()).map_err(vk_err("recording"))?;
            let barrier = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::SHADER_WRITE)
                .dst_access_mask(vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE)];
            for (i, (l, &set)) in launches.iter().zip(&sets).enumerate() {
                if i > 0 {
                    d.cmd_pipeline_barrier(
                        cb,
                        vk::PipelineStageFlags::COMPUTE_SHADER,
                        vk::PipelineStageFlags::COMPUTE_SHADER,
                        vk::DependencyFlags::empty(),
                        &barrier,
                        &[],
                        &[],
                    );
                }
                d.cmd_bind_pipeline(cb, vk::PipelineBindPoint::COMPUTE, l.kernel.pipeline);
                d.cmd_bind_descriptor_sets(cb, vk::PipelineBindPoint::COMPUTE, l.kernel.layout, 0, &[set], &[]);
                let push: Vec<u8> = l.push.iter().flat_map(|w| w.to_le_bytes()).collect();
                d.cmd_push_constants(cb, l.kernel.layout, vk::ShaderStageFlags::COMPUTE, 0, &push);
                d.cmd_dispatch(cb, l.groups[0], l.groups[1], l.groups[2]);
            }
            let host = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::SHADER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ)];
            d.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &host,
                &[],
                &[],
            );
            d.end_command_buffer(cb).map_err(vk_err("recording"))?;
            let cbs = [cb];
            let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
            d.queue_submit(self.queue, &submit, fence).map_err(vk_err("submitting"))?;
            d.wait_for_fences(&[fence], true, u64::MAX).map_err(vk_err("waiting for the device"))
        })();
        d.destroy_fence(fence, None);
        d.free_command_buffers(self.pool, &[cb]);
        result
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: every Buffer and Kernel borrows the Gpu, so none is alive; the device is idle after `run`.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_command_pool(self.pool, None);
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// A storage buffer in host-visible memory, mapped for its lifetime.
pub struct Buffer<'g> {
    gpu: &'g Gpu,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut u8,
    size: u64,
}

impl Buffer<'_> {
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Copy `bytes` in at byte `offset`; panics past the end (a caller's bug).
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        assert!(offset + bytes.len() as u64 <= self.size, "write past the end of a buffer");
        // SAFETY: the range is inside the mapping (checked), and no launch runs while `&mut self` is held.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset as usize), bytes.len()) }
    }

    /// `len` bytes from byte `offset`.
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        assert!(offset + len <= self.size, "read past the end of a buffer");
        // SAFETY: inside the mapping; `run` waited for the device and made its writes visible to the host.
        unsafe { std::slice::from_raw_parts(self.ptr.add(offset as usize), len as usize).to_vec() }
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        // SAFETY: the buffer is not in use: `run` waits for the device before it returns.
        unsafe {
            self.gpu.device.destroy_buffer(self.buffer, None);
            self.gpu.device.free_memory(self.memory, None);
        }
    }
}

/// A compute pipeline and its layouts.
pub struct Kernel<'g> {
    gpu: &'g Gpu,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    module: vk::ShaderModule,
    pipeline: vk::Pipeline,
    bindings: u32,
}

impl Drop for Kernel<'_> {
    fn drop(&mut self) {
        let d = &self.gpu.device;
        // SAFETY: not in use (see Buffer); destroying a null handle is allowed.
        unsafe {
            d.destroy_pipeline(self.pipeline, None);
            d.destroy_shader_module(self.module, None);
            d.destroy_pipeline_layout(self.layout, None);
            d.destroy_descriptor_set_layout(self.set_layout, None);
        }
    }
}

/// One dispatch: a kernel, its buffers in binding order, its push constants, its workgroup counts.
pub struct Launch<'a, 'g> {
    pub kernel: &'a Kernel<'g>,
    pub buffers: &'a [&'a Buffer<'g>],
    pub push: &'a [u32],
    pub groups: [u32; 3],
}
