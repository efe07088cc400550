//! The Phoenix / Hawk Point NPU ("npu1", AIE2 / XDNA1) as data: what the designs are generated for and what the
//! AIE2 verifier ([`crate::verify`]) checks them against.
//!
//! Sources (read, not copied): mlir-aie's `include/aie/Dialect/AIE/IR/AIETargetModel.h` (the npu1 array's
//! columns and rows, which row holds which tile kind, data memory sizes, buffer descriptors and locks per
//! tile kind) and `lib/Dialect/AIE/IR/AIETargetModel.cpp`; AMD AM020 (AIE-ML architecture manual: DMA
//! channels, 3-D/4-D addressing, the MAC rates of the vector unit); the amdxdna driver's DPM table (the 1.6 GHz
//! H-clock). The host dispatch overhead is an estimate, stated as one: no NPU exists on any machine this project
//! has measured on.

/// The kind of a tile of the array, by its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TileKind {
    /// Row 0: the NoC interface, whose DMA moves data between host memory and the array.
    Shim,
    /// Row 1: 512 KiB of memory with its own DMA, for staging and re-laying operands.
    Mem,
    /// Rows 2-5: a core with its data memory.
    Compute,
}

impl std::fmt::Display for TileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TileKind::Shim => "shim",
            TileKind::Mem => "memtile",
            TileKind::Compute => "compute",
        })
    }
}

/// What one kind of tile offers a design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileResources {
    /// Data memory in bytes (0 for the shim, which has none of its own).
    pub memory_bytes: u64,
    /// Buffer descriptors of its DMA.
    pub bds: u32,
    /// Memory-to-stream (outgoing) DMA channels.
    pub mm2s: u32,
    /// Stream-to-memory (incoming) DMA channels.
    pub s2mm: u32,
    /// Hardware locks.
    pub locks: u32,
    /// Dimensions a buffer descriptor addresses (3 for shim and compute tiles, 4 for the memtile).
    pub dma_dims: usize,
}

/// Multiply-accumulates one compute tile's vector unit retires per cycle, by operand type (AM020).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacRates {
    pub bf16: u32,
    pub int8: u32,
    pub int16: u32,
}

/// An NPU array and its host interface.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayModel {
    /// The device as mlir-aie names it (`aie.device(npu1)`).
    pub name: &'static str,
    /// Usable columns (the driver hides the silicon's column 0).
    pub columns: u32,
    /// Rows: shim, memtile, then compute rows.
    pub rows: u32,
    pub shim: TileResources,
    pub mem: TileResources,
    pub compute: TileResources,
    /// The core's stack when a design does not set one, in bytes (part of the data memory).
    pub default_stack_bytes: u64,
    /// The innermost wrap (size) of a buffer descriptor's addressing, in 32-bit words, is a 10-bit field.
    pub max_inner_wrap_words: u64,
    /// Peak per compute tile per cycle.
    pub macs: MacRates,
    /// The array clock at its top DPM level, in Hz.
    pub clock_hz: f64,
    /// Host time per dispatch (an XRT run of an instruction stream: submit, command processing, completion
    /// wait), in seconds. An ESTIMATE, not a measurement: the order of magnitude published runs of XRT on
    /// these NPUs suggest, to be replaced by a measurement on a Phoenix laptop.
    pub dispatch_overhead_s: f64,
    /// Bytes a second the array's shims move between host memory and the array, all four together. An
    /// ASSUMPTION, not a measurement (no figure for the NPU's DDR bandwidth is published; mlir-aie's memcpy
    /// example measures it): about 30 GB/s, the order of one memtile's stream rate, to be replaced by a
    /// measurement on a Phoenix laptop.
    pub host_bytes_s: f64,
}

/// The Phoenix / Hawk Point NPU (Ryzen 7040 / 8040): 4 usable columns of a shim, a memtile and 4 compute tiles.
pub const NPU1: ArrayModel = ArrayModel {
    name: "npu1",
    columns: 4,
    rows: 6,
    shim: TileResources { memory_bytes: 0, bds: 16, mm2s: 2, s2mm: 2, locks: 16, dma_dims: 3 },
    mem: TileResources { memory_bytes: 512 * 1024, bds: 48, mm2s: 6, s2mm: 6, locks: 64, dma_dims: 4 },
    compute: TileResources { memory_bytes: 64 * 1024, bds: 16, mm2s: 2, s2mm: 2, locks: 16, dma_dims: 3 },
    default_stack_bytes: 1024,
    max_inner_wrap_words: 1023,
    macs: MacRates { bf16: 128, int8: 256, int16: 64 },
    clock_hz: 1.6e9,
    dispatch_overhead_s: 100e-6,
    host_bytes_s: 30e9,
};

impl ArrayModel {
    /// The kind of the tile at `(col, row)`, or `None` outside the array.
    pub fn tile_kind(&self, col: u32, row: u32) -> Option<TileKind> {
        if col >= self.columns || row >= self.rows {
            return None;
        }
        Some(match row {
            0 => TileKind::Shim,
            1 => TileKind::Mem,
            _ => TileKind::Compute,
        })
    }

    pub fn resources(&self, kind: TileKind) -> &TileResources {
        match kind {
            TileKind::Shim => &self.shim,
            TileKind::Mem => &self.mem,
            TileKind::Compute => &self.compute,
        }
    }

    /// Compute tiles of the array.
    pub fn compute_tiles(&self) -> u32 {
        self.columns * (self.rows - 2)
    }

    /// Seconds a dispatch that moves `bytes` between host and array and performs `macs` bf16 MACs takes at
    /// best: the dispatch overhead plus the larger of the transfer at [`ArrayModel::host_bytes_s`] and the MACs
    /// at the vector units' peak. An ESTIMATE and a lower bound (whole-array GEMMs measured elsewhere reach
    /// about half the peak).
    pub fn estimate_seconds(&self, bytes: u64, macs: u64) -> f64 {
        let mac_s = self.compute_tiles() as f64 * self.macs.bf16 as f64 * self.clock_hz;
        self.dispatch_overhead_s + (bytes as f64 / self.host_bytes_s).max(macs as f64 / mac_s)
    }

    /// The whole array's peak bf16 rate in FLOP/s (a MAC is two FLOPs): about 6.5 TFLOP/s on npu1 (derived).
    pub fn peak_bf16_flops(&self) -> f64 {
        2.0 * self.macs.bf16 as f64 * self.compute_tiles() as f64 * self.clock_hz
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_npu1_array_is_four_columns_of_a_shim_a_memtile_and_four_cores() {
        assert_eq!(NPU1.tile_kind(0, 0), Some(TileKind::Shim));
        assert_eq!(NPU1.tile_kind(3, 1), Some(TileKind::Mem));
        assert_eq!(NPU1.tile_kind(2, 5), Some(TileKind::Compute));
        assert_eq!(NPU1.tile_kind(4, 2), None);
        assert_eq!(NPU1.tile_kind(0, 6), None);
        assert_eq!(NPU1.compute_tiles(), 16);
        // 16 tiles x 128 bf16 MACs x 2 FLOPs x 1.6 GHz.
        assert!((NPU1.peak_bf16_flops() - 6.5536e12).abs() < 1e6);
    }
}
