//! The project's own AIE2 rules, checked on a [`Design`] before any MLIR is emitted: what mlir-aie's tools
//! would reject late (or a Phoenix NPU would get wrong silently), found here with the tile, fifo or transfer
//! named. Every emitted design passes [`verify`]; each rule has a test that shows it catching a violation.
//!
//! The accounting follows how mlir-aie lowers objectfifos: each end of a fifo on a compute tile or a memtile
//! holds `depth` buffers in that tile's memory, takes one DMA channel of its direction there, `depth` buffer
//! descriptors and two locks (one counting full buffers, one empty); a shim end takes a channel, and its buffer
//! descriptors are the runtime sequence's own. (A fifo between neighbouring compute tiles that share memory can
//! need less; counting it as a DMA fifo only overestimates.)
//!
//! A core's runtime parameter buffer ([`RtpBuffer`]) is an `aie.buffer` of its tile (its words count against
//! the tile's memory) with one lock of the tile as its barrier; the host writes it through the instruction
//! stream, so it takes no DMA channel and no buffer descriptor.

use crate::design::{Coord, CoreBody, Design, Dim, Elem, ObjectFifo, Port, RtpBuffer, SeqOp};
use crate::model::{ArrayModel, TileKind};
use std::collections::{BTreeMap, HashMap};

/// The rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Every tile inside the array, cores on compute tiles, links on memtiles, names unique and known.
    Placement,
    /// A fifo's buffers: a depth, a shape, and a re-layout that covers its buffer within the tile's addressing.
    FifoShape,
    /// Compute tile: its fifos' buffers x depth + the core's locals + its stack within the data memory.
    TileMemory,
    /// Memtile: its fifos' buffers x depth within its 512 KiB.
    MemtileMemory,
    /// DMA channels of each direction per tile.
    Channels,
    /// Buffer descriptors per tile, and a runtime-sequence BD id within the shim's.
    BufferDescriptors,
    /// Hardware locks per tile.
    Locks,
    /// A core acquires only fifo ends on its own tile, at least one and at most `depth` buffers at a time.
    LockUse,
    /// Transfers address whole 32-bit words: the offset, the non-innermost strides and the innermost extent.
    DmaAlignment,
    /// Only the outermost stride of a transfer may be 0.
    DmaStride,
    /// The innermost wrap is a 10-bit count of words unless the transfer is linear.
    DmaWrap,
    /// At most four levels a transfer, and a BD id reused only after a wait on the transfer that holds it.
    DmaSequence,
    /// Runtime parameter buffers: on a core's own tile (one a tile), each word one of the design's
    /// parameters, and every core whose body reads parameters given a buffer of the words it reads.
    RuntimeParams,
    /// A matrix body in the vector unit's shapes: a GEMM of whole 4 x 8 x 4 mmul blocks, a bf16 GEMV of whole
    /// 32-lane chunks of `k`, an int8 GEMV of whole pairs of 32-element blocks (`k` a multiple of 64: its
    /// rows whole words); none of their sizes zero.
    CoreBody,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::Placement => "placement",
            Rule::FifoShape => "fifo shape",
            Rule::TileMemory => "compute tile memory",
            Rule::MemtileMemory => "memtile memory",
            Rule::Channels => "DMA channels",
            Rule::BufferDescriptors => "buffer descriptors",
            Rule::Locks => "locks",
            Rule::LockUse => "lock use",
            Rule::DmaAlignment => "DMA alignment",
            Rule::DmaStride => "DMA stride",
            Rule::DmaWrap => "DMA wrap",
            Rule::DmaSequence => "DMA sequence",
            Rule::RuntimeParams => "runtime parameters",
            Rule::CoreBody => "core body",
        })
    }
}

/// One broken rule, with what breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.rule)
    }
}

/// What a tile of a design uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TileUse {
    pub memory_bytes: u64,
    pub mm2s: u32,
    pub s2mm: u32,
    pub bds: u32,
    pub locks: u32,
}

/// What a design that passes uses, tile by tile.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub tiles: BTreeMap<Coord, TileUse>,
    /// Bytes the runtime sequence moves between the host and the array.
    pub host_bytes: u64,
}

/// Check `design` against the rules of `array`: its usage, or every violation found.
pub fn verify(design: &Design, array: &ArrayModel) -> Result<Usage, Vec<Violation>> {
    let mut v = Checker { array, out: Vec::new() };
    let usage = v.run(design);
    if v.out.is_empty() {
        Ok(usage)
    } else {
        Err(v.out)
    }
}

struct Checker<'a> {
    array: &'a ArrayModel,
    out: Vec<Violation>,
}

impl Checker<'_> {
    fn fail(&mut self, rule: Rule, message: String) {
        self.out.push(Violation { rule, message });
    }

    /// The kind of a tile the design names, or a placement violation.
    fn kind(&mut self, at: Coord, what: &str) -> Option<TileKind> {
        let k = self.array.tile_kind(at.col, at.row);
        if k.is_none() {
            self.fail(
                Rule::Placement,
                format!(
                    "{what}: {at} is outside the {} array of {} x {}",
                    self.array.name, self.array.columns, self.array.rows
                ),
            );
        }
        k
    }

    fn run(&mut self, d: &Design) -> Usage {
        let mut usage = Usage::default();
        let mut names = HashMap::new();
        for f in &d.fifos {
            if names.insert(f.name.as_str(), f).is_some() {
                self.fail(Rule::Placement, format!("fifo {}: the name is used twice", f.name));
            }
            self.fifo_shape(f);
            self.fifo_ends(f, &mut usage);
        }
        for l in &d.links {
            self.link(l, &names);
        }
        let mut cores = HashMap::new();
        for c in &d.cores {
            let what = format!("core at {}", c.tile);
            match self.kind(c.tile, &what) {
                Some(TileKind::Compute) | None => {}
                Some(k) => self.fail(Rule::Placement, format!("{what}: a {k} tile has no core")),
            }
            if cores.insert(c.tile, ()).is_some() {
                self.fail(Rule::Placement, format!("{what}: two cores on one tile"));
            }
            self.core_body(&what, c.body);
            let t = usage.tiles.entry(c.tile).or_default();
            t.memory_bytes += c.locals_bytes + c.stack_bytes.unwrap_or(self.array.default_stack_bytes);
            for u in &c.uses {
                let Some(f) = names.get(u.fifo.as_str()) else {
                    self.fail(Rule::Placement, format!("{what}: uses fifo {}, which the design does not have", u.fifo));
                    continue;
                };
                let on_tile = match u.port {
                    Port::Produce => f.producer == c.tile,
                    Port::Consume => f.consumers.contains(&c.tile),
                };
                if !on_tile {
                    let end = if u.port == Port::Produce { "produces" } else { "consumes" };
                    self.fail(
                        Rule::LockUse,
                        format!("{what}: {end} fifo {}, which has no such end on its tile", f.name),
                    );
                }
                if u.acquire == 0 || u.acquire > f.depth {
                    self.fail(
                        Rule::LockUse,
                        format!(
                            "{what}: acquires {} of fifo {}'s {} buffers at once (1..={})",
                            u.acquire, f.name, f.depth, f.depth
                        ),
                    );
                }
            }
        }
        self.runtime_params(d, &mut usage);
        self.limits(&usage);
        usage.host_bytes = self.sequence(d, &names);
        usage
    }

    /// A matrix body's sizes against the vector unit's shapes ([`Rule::CoreBody`]).
    fn core_body(&mut self, what: &str, body: CoreBody) {
        let fault = match body {
            CoreBody::MatMul { m, k, n, .. } => (m == 0 || k == 0 || n == 0 || m % 4 != 0 || k % 8 != 0 || n % 4 != 0)
                .then(|| format!("a GEMM body of {m} x {k} x {n} is not whole 4 x 8 x 4 mmul blocks")),
            CoreBody::MatVec { rows, k, .. } => (rows == 0 || k == 0 || k % 32 != 0)
                .then(|| format!("a bf16 GEMV body of {rows} rows by {k} is not whole 32-lane chunks of k")),
            CoreBody::MatVecQ8 { rows, k, .. } => (rows == 0 || k == 0 || k % 64 != 0)
                .then(|| format!("an int8 GEMV body of {rows} rows by {k} is not whole pairs of 32-element blocks")),
            _ => None,
        };
        if let Some(f) = fault {
            self.fail(Rule::CoreBody, format!("{what}: {f}"));
        }
    }

    /// The cores' runtime parameter buffers: their words and barrier lock counted on their tiles, and each
    /// on a core's tile, of the design's parameters, as many words as its core reads.
    fn runtime_params(&mut self, d: &Design, usage: &mut Usage) {
        let mut seen: Vec<Coord> = Vec::new();
        for RtpBuffer { tile, words } in &d.rtp {
            let what = format!("runtime parameters at {tile}");
            if seen.contains(tile) {
                self.fail(Rule::RuntimeParams, format!("{what}: a second buffer on the tile"));
            }
            seen.push(*tile);
            if !d.cores.iter().any(|c| c.tile == *tile) {
                self.fail(Rule::RuntimeParams, format!("{what}: no core of the design is on that tile"));
            }
            if words.is_empty() {
                self.fail(Rule::RuntimeParams, format!("{what}: a buffer of no words"));
            }
            if let Some(p) = words.iter().find(|&&p| p >= d.params.len()) {
                self.fail(
                    Rule::RuntimeParams,
                    format!("{what}: a word of parameter {p}, of the design's {} ({:?})", d.params.len(), d.params),
                );
            }
            let t = usage.tiles.entry(*tile).or_default();
            t.memory_bytes += 4 * words.len() as u64;
            t.locks += 1;
        }
        for c in &d.cores {
            let reads = c.body.params_read();
            let has = d.rtp_of(c.tile).map_or(0, |b| b.words.len());
            if has < reads {
                self.fail(
                    Rule::RuntimeParams,
                    format!(
                        "core at {}: reads {reads} words of runtime parameters, its tile's buffer holds {has}",
                        c.tile
                    ),
                );
            }
        }
    }

    fn fifo_shape(&mut self, f: &ObjectFifo) {
        let what = format!("fifo {}", f.name);
        if f.depth == 0 {
            self.fail(Rule::FifoShape, format!("{what}: depth 0"));
        }
        let elems: u64 = f.shape.iter().product();
        if f.shape.is_empty() || elems == 0 {
            self.fail(Rule::FifoShape, format!("{what}: an empty buffer shape {:?}", f.shape));
            return;
        }
        if f.to_stream.is_empty() {
            return;
        }
        let dims = self.array.tile_kind(f.producer.col, f.producer.row).map_or(0, |k| self.array.resources(k).dma_dims);
        if f.to_stream.len() > dims {
            self.fail(
                Rule::FifoShape,
                format!(
                    "{what}: a re-layout of {} levels where its producer's DMA addresses {dims}",
                    f.to_stream.len()
                ),
            );
        }
        let streamed: u64 = f.to_stream.iter().map(|d| d.size).product();
        let last: u64 = f.to_stream.iter().map(|d| d.size.saturating_sub(1) * d.stride).sum();
        if streamed != elems || last >= elems {
            self.fail(
                Rule::FifoShape,
                format!(
                    "{what}: the re-layout streams {streamed} elements reaching element {last}, for a buffer of {elems}"
                ),
            );
        }
    }

    fn fifo_ends(&mut self, f: &ObjectFifo, usage: &mut Usage) {
        let what = format!("fifo {}", f.name);
        if f.consumers.is_empty() {
            self.fail(Rule::Placement, format!("{what}: no consumer"));
        }
        let ends = std::iter::once((f.producer, true)).chain(f.consumers.iter().map(|&c| (c, false)));
        for (at, produces) in ends {
            let Some(kind) = self.kind(at, &what) else { continue };
            let t = usage.tiles.entry(at).or_default();
            if produces {
                t.mm2s += 1;
            } else {
                t.s2mm += 1;
            }
            if kind != TileKind::Shim {
                t.memory_bytes += f.depth as u64 * f.buffer_bytes();
                t.bds += f.depth;
                t.locks += 2;
            }
        }
    }

    fn link(&mut self, l: &crate::design::Link, names: &HashMap<&str, &ObjectFifo>) {
        let what = format!("link {:?} -> {:?}", l.from, l.to);
        let mut tiles = Vec::new();
        for (name, from) in l.from.iter().map(|n| (n, true)).chain(l.to.iter().map(|n| (n, false))) {
            let Some(f) = names.get(name.as_str()) else {
                self.fail(Rule::Placement, format!("{what}: fifo {name}, which the design does not have"));
                continue;
            };
            // The from fifos end at the link's tile; the to fifos start there.
            if from {
                if f.consumers.len() != 1 {
                    self.fail(Rule::Placement, format!("{what}: fifo {name} must end at the link's tile alone"));
                }
                tiles.extend(f.consumers.first().copied());
            } else {
                tiles.push(f.producer);
            }
        }
        if l.from.is_empty() || l.to.is_empty() {
            self.fail(Rule::Placement, format!("{what}: a link joins at least one fifo to another"));
        }
        if let Some(&t) = tiles.first() {
            if tiles.iter().any(|&x| x != t) {
                self.fail(Rule::Placement, format!("{what}: its fifos meet at different tiles"));
            } else if self.array.tile_kind(t.col, t.row) != Some(TileKind::Mem) {
                self.fail(Rule::Placement, format!("{what}: links go through a memtile, not {t}"));
            }
        }
    }

    fn limits(&mut self, usage: &Usage) {
        for (&at, t) in &usage.tiles {
            let Some(kind) = self.array.tile_kind(at.col, at.row) else { continue };
            let r = *self.array.resources(kind);
            let rule = if kind == TileKind::Mem { Rule::MemtileMemory } else { Rule::TileMemory };
            if kind != TileKind::Shim && t.memory_bytes > r.memory_bytes {
                self.fail(
                    rule,
                    format!(
                        "{at} ({kind}): {} bytes of buffers, locals and stack in {} bytes of memory",
                        t.memory_bytes, r.memory_bytes
                    ),
                );
            }
            if t.mm2s > r.mm2s || t.s2mm > r.s2mm {
                self.fail(
                    Rule::Channels,
                    format!(
                        "{at} ({kind}): {} outgoing and {} incoming DMA channels, of {} and {}",
                        t.mm2s, t.s2mm, r.mm2s, r.s2mm
                    ),
                );
            }
            if t.bds > r.bds {
                self.fail(
                    Rule::BufferDescriptors,
                    format!("{at} ({kind}): {} buffer descriptors, of {}", t.bds, r.bds),
                );
            }
            if t.locks > r.locks {
                self.fail(Rule::Locks, format!("{at} ({kind}): {} locks, of {}", t.locks, r.locks));
            }
        }
    }

    /// The runtime sequence's transfers; the bytes they move.
    fn sequence(&mut self, d: &Design, names: &HashMap<&str, &ObjectFifo>) -> u64 {
        let mut bytes = 0;
        // BD ids in flight: id -> the fifo whose transfer holds it until a wait on that fifo.
        let mut busy: HashMap<u32, String> = HashMap::new();
        for (i, op) in d.sequence.iter().enumerate() {
            match op {
                SeqOp::Wait { fifo } => busy.retain(|_, f| f != fifo),
                SeqOp::Memcpy { arg, elem, offset, dims, fifo, bd } => {
                    let what = format!("transfer {i} (argument {arg} <-> fifo {fifo})");
                    match names.get(fifo.as_str()) {
                        None => self.fail(Rule::Placement, format!("{what}: the design has no fifo {fifo}")),
                        Some(f) => {
                            let shim = |c: &Coord| self.array.tile_kind(c.col, c.row) == Some(TileKind::Shim);
                            if !shim(&f.producer) && !f.consumers.iter().any(shim) {
                                self.fail(Rule::Placement, format!("{what}: fifo {fifo} has no end on a shim tile"));
                            }
                        }
                    }
                    if *bd >= self.array.shim.bds {
                        self.fail(
                            Rule::BufferDescriptors,
                            format!("{what}: BD {bd}, of the shim's 0..{}", self.array.shim.bds),
                        );
                    }
                    if let Some(holder) = busy.insert(*bd, fifo.clone()) {
                        self.fail(
                            Rule::DmaSequence,
                            format!(
                                "{what}: BD {bd} is still held by a transfer of fifo {holder} (no wait on it since)"
                            ),
                        );
                    }
                    self.transfer(&what, *elem, *offset, dims);
                    bytes += dims.iter().map(|d| d.size).product::<u64>() * elem.bytes();
                }
            }
        }
        bytes
    }

    fn transfer(&mut self, what: &str, elem: Elem, offset: u64, dims: &[Dim]) {
        if dims.is_empty() || dims.len() > 4 {
            self.fail(Rule::DmaSequence, format!("{what}: {} levels (1..=4)", dims.len()));
            return;
        }
        let eb = elem.bytes();
        let inner = dims[dims.len() - 1];
        if !(offset * eb).is_multiple_of(4) {
            self.fail(Rule::DmaAlignment, format!("{what}: starts at byte {}, not on a 4-byte boundary", offset * eb));
        }
        if !(inner.size * eb).is_multiple_of(4) || (eb < 4 && inner.stride != 1) {
            self.fail(
                Rule::DmaAlignment,
                format!(
                    "{what}: an innermost level of {} x {eb} bytes at stride {}: not whole words",
                    inner.size, inner.stride
                ),
            );
        }
        for (l, d) in dims[..dims.len() - 1].iter().enumerate() {
            if !(d.stride * eb).is_multiple_of(4) {
                self.fail(
                    Rule::DmaAlignment,
                    format!("{what}: level {l}'s stride of {} bytes is not whole words", d.stride * eb),
                );
            }
        }
        for (l, d) in dims.iter().enumerate().skip(1) {
            if d.stride == 0 && d.size > 1 {
                self.fail(Rule::DmaStride, format!("{what}: level {l} (not the outermost) has stride 0"));
            }
        }
        // Linear: every level continues where the one inside it ends, so the DMA moves one run of words.
        let mut run = 1;
        let mut linear = true;
        for d in dims.iter().rev() {
            if d.size > 1 && d.stride != run {
                linear = false;
            }
            run *= d.size;
        }
        let wrap_words = inner.size * eb / 4;
        if !linear && wrap_words > self.array.max_inner_wrap_words {
            self.fail(
                Rule::DmaWrap,
                format!(
                    "{what}: an innermost wrap of {wrap_words} words (at most {})",
                    self.array.max_inner_wrap_words
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::*;
    use crate::model::NPU1;

    fn at(col: u32, row: u32) -> Coord {
        Coord { col, row }
    }

    fn fifo(name: &str, from: Coord, to: &[Coord], depth: u32, shape: &[u64]) -> ObjectFifo {
        ObjectFifo {
            name: name.into(),
            producer: from,
            consumers: to.to_vec(),
            depth,
            shape: shape.to_vec(),
            elem: Elem::Bf16,
            to_stream: Vec::new(),
        }
    }

    fn dims(v: &[(u64, u64)]) -> Vec<Dim> {
        v.iter().map(|&(size, stride)| Dim { size, stride }).collect()
    }

    /// A GEMM-like column: A streamed from the host through the memtile (re-laid into 4 x 8 blocks, the bf16
    /// mmul shape's A operand) to the
    /// core at (0, 2), the result back; double-buffered fifos.
    fn valid() -> Design {
        let mut a_mem = fifo("a_mem", at(0, 1), &[at(0, 2)], 2, &[64, 64]);
        a_mem.to_stream = dims(&[(16, 256), (8, 8), (4, 64), (8, 1)]);
        Design {
            name: "gemm".into(),
            fifos: vec![
                fifo("a_in", at(0, 0), &[at(0, 1)], 2, &[64, 64]),
                a_mem,
                fifo("c_out", at(0, 2), &[at(0, 0)], 2, &[64, 64]),
            ],
            links: vec![Link { from: vec!["a_in".into()], to: vec!["a_mem".into()] }],
            cores: vec![Core {
                tile: at(0, 2),
                locals_bytes: 4096,
                stack_bytes: None,
                uses: vec![
                    FifoUse { fifo: "a_mem".into(), port: Port::Consume, acquire: 1 },
                    FifoUse { fifo: "c_out".into(), port: Port::Produce, acquire: 1 },
                ],
                body: CoreBody::MatMul { m: 64, k: 64, n: 64, k_tiles: 1, bt: false },
            }],
            params: Vec::new(),
            rtp: Vec::new(),
            sequence: vec![
                SeqOp::Memcpy {
                    arg: 0,
                    elem: Elem::Bf16,
                    offset: 0,
                    dims: dims(&[(1, 0), (4, 64 * 256), (64, 256), (64, 1)]),
                    fifo: "a_in".into(),
                    bd: 0,
                },
                SeqOp::Memcpy {
                    arg: 1,
                    elem: Elem::Bf16,
                    offset: 0,
                    dims: dims(&[(1, 0), (1, 0), (1, 0), (4096, 1)]),
                    fifo: "c_out".into(),
                    bd: 1,
                },
                SeqOp::Wait { fifo: "c_out".into() },
                SeqOp::Wait { fifo: "a_in".into() },
            ],
        }
    }

    /// The design with `edit` applied breaks `rule` (and the message names what breaks it).
    fn breaks(rule: Rule, names: &str, edit: impl FnOnce(&mut Design)) {
        let mut d = valid();
        edit(&mut d);
        let errs = verify(&d, &NPU1).expect_err("the edit breaks a rule");
        let hit = errs.iter().find(|e| e.rule == rule).unwrap_or_else(|| panic!("no {rule} violation in {errs:?}"));
        assert!(hit.to_string().contains(names), "{hit} does not name {names}");
    }

    #[test]
    fn a_valid_design_passes_with_its_usage_counted() {
        let u = verify(&valid(), &NPU1).unwrap();
        let core = u.tiles[&at(0, 2)];
        // a_mem and c_out double-buffered (2 x 8 KiB each), 4 KiB of locals, the default 1 KiB stack.
        assert_eq!(core.memory_bytes, 4 * 8192 + 4096 + 1024);
        assert_eq!((core.mm2s, core.s2mm, core.bds, core.locks), (1, 1, 4, 4));
        let mem = u.tiles[&at(0, 1)];
        assert_eq!((mem.memory_bytes, mem.mm2s, mem.s2mm), (4 * 8192, 1, 1));
        // Four 64 x 64 tiles of A in, one of C out, in bf16.
        assert_eq!(u.host_bytes, (4 + 1) * 4096 * 2);
    }

    #[test]
    fn placement_outside_the_array_or_on_the_wrong_tile() {
        breaks(Rule::Placement, "tile(4, 2)", |d| d.cores[0].tile = at(4, 2));
        breaks(Rule::Placement, "core at tile(0, 1)", |d| d.cores[0].tile = at(0, 1));
        breaks(Rule::Placement, "memtile", |d| {
            d.fifos[0].consumers = vec![at(0, 2)];
            d.fifos[1].producer = at(0, 2);
        });
        breaks(Rule::Placement, "fifo a_in", |d| d.fifos.push(fifo("a_in", at(1, 0), &[at(1, 2)], 1, &[8])));
        breaks(Rule::Placement, "b_mem", |d| d.cores[0].uses[0].fifo = "b_mem".into());
    }

    #[test]
    fn fifo_shapes_and_relayouts() {
        breaks(Rule::FifoShape, "depth 0", |d| d.fifos[2].depth = 0);
        // A re-layout that streams the buffer's elements but reaches past it.
        breaks(Rule::FifoShape, "a_mem", |d| d.fifos[1].to_stream = dims(&[(16, 256), (8, 8), (4, 64), (8, 2)]));
        // Five levels on a memtile that addresses four.
        breaks(Rule::FifoShape, "5 levels", |d| {
            d.fifos[1].to_stream = dims(&[(1, 0), (16, 256), (8, 8), (4, 64), (8, 1)])
        });
    }

    #[test]
    fn compute_tile_and_memtile_memory() {
        // 64 KiB: 2 x 8 KiB x 2 fifos + locals + stack over it by a byte.
        breaks(Rule::TileMemory, "tile(0, 2)", |d| d.cores[0].locals_bytes = 65536 - 4 * 8192 - 1024 + 1);
        breaks(Rule::MemtileMemory, "tile(0, 1)", |d| {
            d.fifos[0].depth = 4;
            d.fifos[0].shape = vec![256, 256];
            d.fifos[1].shape = vec![256, 256];
            d.fifos[1].to_stream.clear();
        });
    }

    #[test]
    fn channels_descriptors_and_locks() {
        // Three fifos out of one compute tile: two outgoing channels.
        breaks(Rule::Channels, "3 outgoing", |d| {
            for n in ["x", "y"] {
                d.fifos.push(fifo(n, at(0, 2), &[at(1, 2)], 1, &[8]));
            }
        });
        // Depth 9 on both of the core's fifos: 18 buffer descriptors of 16.
        breaks(Rule::BufferDescriptors, "18 buffer descriptors", |d| {
            d.fifos[1].depth = 9;
            d.fifos[2].depth = 9;
            d.fifos[1].shape = vec![8];
            d.fifos[1].to_stream.clear();
            d.fifos[2].shape = vec![8];
        });
        // A runtime-sequence BD past the shim's 16.
        breaks(Rule::BufferDescriptors, "BD 16", |d| {
            if let SeqOp::Memcpy { bd, .. } = &mut d.sequence[1] {
                *bd = 16;
            }
        });
        // Nine fifos into one memtile and out of it: 18 ends, 36 locks of 64 are fine, 33 fifos through it
        // (66 ends, 132 locks) are not — and break the channels too.
        breaks(Rule::Locks, "locks, of 64", |d| {
            for i in 0..33 {
                d.fifos.push(fifo(&format!("m{i}"), at(1, 1), &[at(2, 1)], 1, &[8]));
            }
        });
    }

    #[test]
    fn lock_use_of_the_cores() {
        breaks(Rule::LockUse, "acquires 3 of fifo a_mem's 2", |d| d.cores[0].uses[0].acquire = 3);
        breaks(Rule::LockUse, "acquires 0", |d| d.cores[0].uses[0].acquire = 0);
        breaks(Rule::LockUse, "produces fifo a_mem", |d| d.cores[0].uses[0].port = Port::Produce);
    }

    /// Matrix bodies outside the vector unit's shapes are refused, each naming the core and its sizes.
    #[test]
    fn core_bodies_in_the_vector_units_shapes() {
        let mm = |m, k, n| CoreBody::MatMul { m, k, n, k_tiles: 1, bt: false };
        for (body, says) in [
            (mm(62, 64, 64), "a GEMM body of 62 x 64 x 64 is not whole"),
            (mm(64, 60, 64), "a GEMM body of 64 x 60 x 64"),
            (mm(64, 64, 6), "a GEMM body of 64 x 64 x 6"),
            (mm(0, 64, 64), "a GEMM body of 0 x 64 x 64"),
            (CoreBody::MatVec { rows: 4, k: 48, k_tiles: 1 }, "a bf16 GEMV body of 4 rows by 48"),
            (CoreBody::MatVecQ8 { rows: 4, k: 96, k_tiles: 1 }, "an int8 GEMV body of 4 rows by 96"),
        ] {
            breaks(Rule::CoreBody, says, |d| d.cores[0].body = body);
        }
        let mut d = valid();
        d.cores[0].body = CoreBody::MatVec { rows: 4, k: 64, k_tiles: 1 };
        let refused = verify(&d, &NPU1).err().unwrap_or_default();
        assert!(refused.iter().all(|v| v.rule != Rule::CoreBody), "{refused:?}");
    }

    fn edit_transfer(d: &mut Design, f: impl FnOnce(&mut u64, &mut Vec<Dim>, &mut Elem)) {
        if let SeqOp::Memcpy { offset, dims, elem, .. } = &mut d.sequence[0] {
            f(offset, dims, elem);
        }
    }

    /// The valid design with two runtime parameters held by its core's tile.
    fn with_params() -> Design {
        let mut d = valid();
        d.params = vec!["q0".into(), "kv_len".into()];
        d.rtp = vec![RtpBuffer { tile: at(0, 2), words: vec![0, 1] }];
        d
    }

    /// A core's runtime parameters count on its tile (two words, one lock); a buffer off a core's tile, a second
    /// one on a tile, one of no words, a word of a parameter the design does not take and an attention core
    /// without the words it reads all break the rule; and the memory they take counts against the tile's.
    #[test]
    fn runtime_parameter_buffers() {
        let u = verify(&with_params(), &NPU1).unwrap();
        let core = u.tiles[&at(0, 2)];
        assert_eq!(
            (core.memory_bytes, core.locks, core.bds, core.mm2s, core.s2mm),
            (4 * 8192 + 4096 + 1024 + 8, 5, 4, 1, 1)
        );
        let breaks_p = |names: &str, edit: &dyn Fn(&mut Design)| {
            let mut d = with_params();
            edit(&mut d);
            let errs = verify(&d, &NPU1).expect_err("the edit breaks a rule");
            let hit = errs.iter().find(|e| e.rule == Rule::RuntimeParams).unwrap_or_else(|| panic!("{errs:?}"));
            assert!(hit.to_string().contains(names), "{hit} does not name {names}");
        };
        breaks_p("no core of the design is on that tile", &|d| d.rtp[0].tile = at(1, 2));
        breaks_p("a second buffer", &|d| d.rtp.push(RtpBuffer { tile: at(0, 2), words: vec![0] }));
        breaks_p("no words", &|d| d.rtp[0].words.clear());
        breaks_p("parameter 2, of the design's 2", &|d| d.rtp[0].words[1] = 2);
        let rounds = AttentionRounds {
            rows: 4,
            max_keys: 8,
            heads: 1,
            kv_heads: 1,
            columns: 1,
            per_col: 1,
            window: 0,
            scale: 0.5,
            column: 0,
        };
        breaks_p("reads 2 words of runtime parameters, its tile's buffer holds 1", &|d| {
            d.cores[0].body = CoreBody::Attention { q_rows: 4, keys: 8, head_dim: 8, rounds, slot: 0 };
            d.rtp[0].words.pop();
        });
        // The core's 64 KiB full but for the two words: they tip it over.
        let mut d = with_params();
        d.cores[0].locals_bytes = 65536 - 4 * 8192 - 1024 - 4;
        let errs = verify(&d, &NPU1).unwrap_err();
        assert!(errs.iter().any(|e| e.rule == Rule::TileMemory && e.message.contains("65540 bytes")), "{errs:?}");
    }

    #[test]
    fn dma_alignment_stride_wrap_and_sequence() {
        breaks(Rule::DmaAlignment, "byte 2", |d| edit_transfer(d, |o, _, _| *o = 1));
        breaks(Rule::DmaAlignment, "63 x 2 bytes", |d| edit_transfer(d, |_, v, _| v[3].size = 63));
        breaks(Rule::DmaAlignment, "stride 2", |d| edit_transfer(d, |_, v, _| v[3].stride = 2));
        breaks(Rule::DmaStride, "level 2", |d| edit_transfer(d, |_, v, _| v[2].stride = 0));
        // 2048 f32 per row at a row stride of 4096: a wrap of 2048 words that is not linear.
        breaks(Rule::DmaWrap, "2048 words", |d| {
            edit_transfer(d, |_, v, e| {
                *e = Elem::F32;
                *v = dims(&[(1, 0), (1, 0), (2, 4096), (2048, 1)]);
            })
        });
        // The same rows back to back are one linear run of words, which any length may be.
        let mut d = valid();
        edit_transfer(&mut d, |_, v, e| {
            *e = Elem::F32;
            *v = dims(&[(1, 0), (1, 0), (2, 2048), (2048, 1)]);
        });
        verify(&d, &NPU1).unwrap();
        breaks(Rule::DmaSequence, "BD 0 is still held", |d| {
            let again = d.sequence[0].clone();
            d.sequence.insert(1, again);
        });
        breaks(Rule::DmaSequence, "5 levels", |d| edit_transfer(d, |_, v, _| v.insert(0, Dim { size: 1, stride: 0 })));
        // After a wait on its fifo a BD may be used again.
        let mut d = valid();
        let again = d.sequence[0].clone();
        d.sequence.push(again);
        verify(&d, &NPU1).unwrap();
    }
}
