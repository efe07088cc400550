//! What a GPU offers the kernels compiled for it: the device profile a Vulkan plan is generated for, the
//! features each of its kernels needs (recorded in the kernel table, checked by the executor against the
//! device it opens), and — with the `vulkan` feature — the probe that describes this machine's devices.
//!
//! A profile is data: the compiler takes the GPU it finds (`--device-profile auto`, the default), one named by
//! its loader index (`vulkan:N`), the generic Vulkan 1.2 profile (`generic`: no subgroup operations, the
//! 16 KiB of shared memory every device has, no cooperative matrices), or a JSON file of this struct.

use serde::{Deserialize, Serialize};

/// The device facts kernel generation depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProfile {
    /// The device's name, or `generic-vulkan-1.2`.
    pub name: String,
    /// Whether compute shaders have the basic and shuffle subgroup operations (`subgroupShuffleXor`).
    #[serde(default)]
    pub subgroup_shuffle: bool,
    /// The subgroup size the driver reports (informational: kernels work with any power of two).
    #[serde(default)]
    pub subgroup_size: u32,
    /// `maxComputeSharedMemorySize` in bytes.
    pub max_shared_bytes: u32,
    /// VK_KHR_cooperative_matrix shapes at subgroup scope, `MxNxK:A/C` (`16x16x16:f16/f32`).
    #[serde(default)]
    pub cooperative_matrix: Vec<String>,
    /// Whether shaders have packed 4x8-bit integer dot products (VK_KHR_shader_integer_dot_product).
    #[serde(default)]
    pub integer_dot: bool,
}

/// The cooperative-matrix shape the prefill GEMM is written for: f16 operands, f32 accumulators.
pub const COOPMAT_F16_F32: &str = "16x16x16:f16/f32";

/// Something a kernel needs of the device beyond Vulkan 1.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// Basic and shuffle subgroup operations in compute shaders.
    SubgroupShuffle,
    /// A VK_KHR_cooperative_matrix shape, as [`DeviceProfile::cooperative_matrix`] spells it.
    CooperativeMatrix(String),
    /// Shared memory per workgroup beyond the 16 KiB every device has, in bytes.
    SharedMemory(u32),
    /// Packed 4x8-bit integer dot products in shaders (VK_KHR_shader_integer_dot_product).
    IntegerDot,
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Feature::SubgroupShuffle => write!(f, "subgroup shuffles in compute shaders"),
            Feature::CooperativeMatrix(s) => write!(f, "cooperative matrices of {s}"),
            Feature::SharedMemory(b) => write!(f, "{b} bytes of shared memory per workgroup"),
            Feature::IntegerDot => write!(f, "integer dot products (VK_KHR_shader_integer_dot_product)"),
        }
    }
}

/// Shared memory every Vulkan device gives a compute workgroup.
pub const MIN_SHARED_BYTES: u32 = 16384;

impl DeviceProfile {
    /// What every Vulkan 1.2 device offers.
    pub fn generic() -> Self {
        DeviceProfile {
            name: "generic-vulkan-1.2".into(),
            subgroup_shuffle: false,
            subgroup_size: 0,
            max_shared_bytes: MIN_SHARED_BYTES,
            cooperative_matrix: Vec::new(),
            integer_dot: false,
        }
    }

    pub fn supports(&self, f: &Feature) -> bool {
        match f {
            Feature::SubgroupShuffle => self.subgroup_shuffle,
            Feature::CooperativeMatrix(s) => self.cooperative_matrix.iter().any(|c| c == s),
            Feature::SharedMemory(b) => *b <= self.max_shared_bytes,
            Feature::IntegerDot => self.integer_dot,
        }
    }

    /// The first of `needs` this device lacks.
    pub fn missing<'a>(&self, needs: &'a [Feature]) -> Option<&'a Feature> {
        needs.iter().find(|f| !self.supports(f))
    }

    /// A profile from its JSON file, or a one-line error naming the file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a device profile: {e}", path.display()))
    }
}

#[cfg(feature = "vulkan")]
pub use probe::*;

#[cfg(feature = "vulkan")]
mod probe {
    //! The Vulkan devices of this machine, described through the loader (ash, loaded at run time).
    use super::DeviceProfile;
    use ash::vk;

    type Result<T> = std::result::Result<T, String>;

    /// What a physical device offers, for `--list-devices` and for choosing kernels.
    #[derive(Debug, Clone)]
    pub struct DeviceInfo {
        pub name: String,
        /// `integrated`, `discrete`, `virtual`, `cpu` or `other`.
        pub kind: &'static str,
        pub api_version: (u32, u32, u32),
        pub device_local_bytes: u64,
        pub subgroup_size: u32,
        pub max_storage_buffer_range: u32,
        pub min_storage_buffer_offset_alignment: u64,
        pub max_workgroup_count: [u32; 3],
        /// Nanoseconds per timestamp tick; 0 when the compute queue has no timestamps.
        pub timestamp_period_ns: f32,
        /// The cooperative-matrix shapes of VK_KHR_cooperative_matrix at subgroup scope, as `MxNxK:A/C`
        /// (`16x16x16:f16/f32`); empty without the extension.
        pub cooperative_matrix: Vec<String>,
        /// Basic and shuffle subgroup operations in compute shaders.
        pub subgroup_shuffle: bool,
        /// `maxComputeSharedMemorySize`.
        pub max_shared_bytes: u32,
        /// VK_KHR_shader_integer_dot_product with its `shaderIntegerDotProduct` feature.
        pub integer_dot: bool,
    }

    impl DeviceInfo {
        /// The profile kernels are generated for on this device.
        pub fn profile(&self) -> DeviceProfile {
            DeviceProfile {
                name: self.name.clone(),
                subgroup_shuffle: self.subgroup_shuffle,
                subgroup_size: self.subgroup_size,
                max_shared_bytes: self.max_shared_bytes,
                cooperative_matrix: self.cooperative_matrix.clone(),
                integer_dot: self.integer_dot,
            }
        }
    }

    fn component(t: vk::ComponentTypeKHR) -> &'static str {
        match t {
            vk::ComponentTypeKHR::FLOAT16 => "f16",
            vk::ComponentTypeKHR::FLOAT32 => "f32",
            vk::ComponentTypeKHR::SINT8 => "i8",
            vk::ComponentTypeKHR::UINT8 => "u8",
            vk::ComponentTypeKHR::SINT32 => "i32",
            vk::ComponentTypeKHR::UINT32 => "u32",
            _ => "other",
        }
    }

    fn cooperative_shapes(entry: &ash::Entry, instance: &ash::Instance, pd: vk::PhysicalDevice) -> Vec<String> {
        // SAFETY: `pd` came from this instance.
        let exts = unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
        let has = exts.iter().any(|e| e.extension_name_as_c_str() == Ok(vk::KHR_COOPERATIVE_MATRIX_NAME));
        if !has {
            return Vec::new();
        }
        let coop = ash::khr::cooperative_matrix::Instance::new(entry, instance);
        // SAFETY: the device has the extension, so its instance-level query exists.
        let props = unsafe { coop.get_physical_device_cooperative_matrix_properties(pd) }.unwrap_or_default();
        let mut v: Vec<String> = props
            .iter()
            .filter(|p| p.scope == vk::ScopeKHR::SUBGROUP)
            .map(|p| format!("{}x{}x{}:{}/{}", p.m_size, p.n_size, p.k_size, component(p.a_type), component(p.c_type)))
            .collect();
        v.dedup();
        v
    }

    /// The Vulkan loader, or a one-line error naming the library it looked for.
    pub fn load() -> Result<ash::Entry> {
        // SAFETY: loading libvulkan runs its initialisers; the loader is a system library meant to be loaded so.
        unsafe { ash::Entry::load() }.map_err(|e| {
            format!("vulkan: no Vulkan loader ({e}); install libvulkan1 and a driver (mesa-vulkan-drivers)")
        })
    }

    pub fn create_instance(entry: &ash::Entry) -> Result<ash::Instance> {
        let app = vk::ApplicationInfo::default().application_name(c"unicorn").api_version(vk::API_VERSION_1_2);
        let info = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: the create info and what it points to live across the call.
        unsafe { entry.create_instance(&info, None) }.map_err(|e| match e {
            vk::Result::ERROR_INCOMPATIBLE_DRIVER => {
                "vulkan: no Vulkan driver found (install the GPU's Vulkan driver, or \
                                                      mesa-vulkan-drivers for Mesa's)"
                    .to_string()
            }
            e => format!("vulkan: creating an instance: {e}"),
        })
    }

    pub fn describe(entry: &ash::Entry, instance: &ash::Instance, pd: vk::PhysicalDevice) -> DeviceInfo {
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
        let kind = match p.device_type {
            vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
            vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
            vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
            vk::PhysicalDeviceType::CPU => "cpu",
            _ => "other",
        };
        let v = p.api_version;
        DeviceInfo {
            name: p.device_name_as_c_str().ok().and_then(|c| c.to_str().ok()).unwrap_or("?").to_string(),
            kind,
            api_version: (vk::api_version_major(v), vk::api_version_minor(v), vk::api_version_patch(v)),
            device_local_bytes,
            subgroup_size: subgroup.subgroup_size,
            max_storage_buffer_range: p.limits.max_storage_buffer_range,
            min_storage_buffer_offset_alignment: p.limits.min_storage_buffer_offset_alignment,
            max_workgroup_count: p.limits.max_compute_work_group_count,
            timestamp_period_ns: if p.limits.timestamp_compute_and_graphics == vk::TRUE {
                p.limits.timestamp_period
            } else {
                0.0
            },
            cooperative_matrix: cooperative_shapes(entry, instance, pd),
            subgroup_shuffle: subgroup.supported_stages.contains(vk::ShaderStageFlags::COMPUTE)
                && subgroup
                    .supported_operations
                    .contains(vk::SubgroupFeatureFlags::BASIC | vk::SubgroupFeatureFlags::SHUFFLE),
            max_shared_bytes: p.limits.max_compute_shared_memory_size,
            integer_dot: integer_dot(instance, pd),
        }
    }

    /// Whether the device has VK_KHR_shader_integer_dot_product and its feature.
    fn integer_dot(instance: &ash::Instance, pd: vk::PhysicalDevice) -> bool {
        // SAFETY: `pd` came from this instance.
        let exts = unsafe { instance.enumerate_device_extension_properties(pd) }.unwrap_or_default();
        if !exts.iter().any(|e| e.extension_name_as_c_str() == Ok(vk::KHR_SHADER_INTEGER_DOT_PRODUCT_NAME)) {
            return false;
        }
        let mut dot = vk::PhysicalDeviceShaderIntegerDotProductFeatures::default();
        let mut query = vk::PhysicalDeviceFeatures2::default().push_next(&mut dot);
        // SAFETY: the device has the extension, so the chained structure is known to it; both are writable.
        unsafe { instance.get_physical_device_features2(pd, &mut query) };
        dot.shader_integer_dot_product == vk::TRUE
    }

    /// Every Vulkan device of this machine, in the loader's order (what `vulkan:N` counts).
    pub fn devices() -> Result<Vec<DeviceInfo>> {
        let entry = load()?;
        let instance = create_instance(&entry)?;
        // SAFETY: the instance is valid; it is destroyed after its devices are described.
        let list =
            unsafe { instance.enumerate_physical_devices() }.map_err(|e| format!("vulkan: listing devices: {e}"));
        let out = list.map(|pds| pds.into_iter().map(|pd| describe(&entry, &instance, pd)).collect());
        // SAFETY: nothing created from the instance outlives this point.
        unsafe { instance.destroy_instance(None) };
        out
    }
}
