//! An emulator of an AIE2 design's dataflow: it executes the design itself — each runtime-sequence transfer
//! walked level by level over its host argument (offset, sizes, strides), the stream cut into its fifo's
//! buffers, the memtile links joining or passing them on, each `dimensionsToStream` re-layout applied as the
//! producer's DMA would, and each core's body run on the buffers in the layout they arrive in, with bf16
//! operands (int8 weights widened, with their blocks' scales) and f32 accumulation — so that a wrong access pattern gives wrong numbers here, not only on a chip.
//! It counts dispatches, bytes moved between host and array, and MACs (those the cores compute: an attention
//! tile a core skips is not counted).
//!
//! A design with runtime parameters ([`Design::params`]) is run with their values ([`run_with`]): each
//! core's [`RtpBuffer`](crate::design::RtpBuffer) holds them from the start of the dispatch, as the runtime
//! sequence writes them before its first transfer and then releases the cores' barriers.
//!
//! Fifos are modelled as queues per consumer (a broadcast gives each consumer its copy) that hold at most the
//! fifo's depth of buffers: a producer (a host transfer, a memtile link, a core) moves a buffer on only where
//! every consumer has room, and a core starts an output only where its output fifo has room, so a design whose
//! buffers back up into each other stops here as it would on the array. The host's transfers all stream at once
//! (each is a DMA of its own once the sequence issues it), and a transfer out of the array takes its buffers as
//! they arrive; a wait that cannot be met because nothing can move is reported with the fifos that are full.
//! Timing is not modelled, only what can move before what.

use crate::design::{
    q8, AttentionRounds, Coord, CoreBody, Design, Dim, Elem, ObjectFifo, Port, RowOp, RowPieces, SeqOp,
};
use std::collections::{HashMap, VecDeque};

/// What one dispatch of a design did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmuStats {
    pub dispatches: u64,
    /// Bytes the runtime sequence moved between the host and the array.
    pub host_bytes: u64,
    pub macs: u64,
}

/// f32 rounded to the nearest bf16 (ties to even), as f32.
pub fn bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(rounded)
}

/// The element offsets a transfer or re-layout visits, outermost level first.
fn walk(offset: u64, dims: &[Dim]) -> Vec<u64> {
    let mut out = vec![offset];
    for d in dims {
        out = out.iter().flat_map(|&o| (0..d.size).map(move |i| o + i * d.stride)).collect();
    }
    out
}

struct Emu<'d> {
    design: &'d Design,
    /// Buffers waiting at each fifo end: (fifo, consumer tile) -> queue.
    queues: HashMap<(String, Coord), VecDeque<Vec<f32>>>,
    /// Per core: its accumulator and the pairs folded into it so far.
    acc: HashMap<Coord, (Vec<f32>, u64)>,
    /// Per attention core: where it is in its rounds.
    attn: HashMap<Coord, AttnState>,
    /// Per core of rows in pieces: where it is in its row's two passes.
    pieces: HashMap<Coord, PiecesState>,
    /// The dispatch's runtime parameter values.
    params: &'d [u32],
    /// Elements of a partly filled buffer streamed in from the host, per fifo.
    partial: HashMap<String, Vec<f32>>,
    /// Whole buffers of host transfers not yet in their fifo (it was full), per fifo, in order.
    pending: HashMap<String, VecDeque<Vec<f32>>>,
    /// Transfers out of the array, in the order the sequence issued them.
    drains: Vec<Drain>,
    stats: EmuStats,
}

/// A transfer out of the array: its fifo, the host argument and the offsets it writes, and what it took so far.
struct Drain {
    fifo: String,
    arg: usize,
    at: Vec<u64>,
    got: Vec<f32>,
}

impl<'d> Emu<'d> {
    fn fifo(&self, name: &str) -> Result<&'d ObjectFifo, String> {
        self.design.fifo(name).ok_or_else(|| format!("{}: no fifo {name}", self.design.name))
    }

    /// A buffer leaving its producer: re-laid where the fifo says, then queued at every consumer.
    fn produce(&mut self, f: &ObjectFifo, buf: Vec<f32>) {
        let buf = if f.to_stream.is_empty() {
            buf
        } else {
            walk(0, &f.to_stream).into_iter().map(|i| buf[i as usize]).collect()
        };
        for &c in &f.consumers {
            self.queues.entry((f.name.clone(), c)).or_default().push_back(buf.clone());
        }
    }

    fn take(&mut self, fifo: &str, at: Coord) -> Option<Vec<f32>> {
        self.queues.get_mut(&(fifo.to_string(), at))?.pop_front()
    }

    fn ready(&self, fifo: &str, at: Coord) -> bool {
        self.queues.get(&(fifo.to_string(), at)).is_some_and(|q| !q.is_empty())
    }

    /// Whether every consumer of `f` has room for one more buffer.
    fn room(&self, f: &ObjectFifo) -> bool {
        let held = |c: &Coord| self.queues.get(&(f.name.clone(), *c)).map_or(0, |q| q.len());
        f.consumers.iter().all(|c| held(c) < f.depth.max(1) as usize)
    }

    /// The fifo ends that are full, for a report of where the dataflow stopped.
    fn full(&self) -> String {
        let mut v: Vec<String> = self
            .design
            .fifos
            .iter()
            .flat_map(|f| f.consumers.iter().map(move |c| (f, c)))
            .filter(|(f, c)| {
                self.queues.get(&(f.name.clone(), **c)).is_some_and(|q| q.len() >= f.depth.max(1) as usize)
            })
            .map(|(f, c)| format!("{} at {c} (depth {})", f.name, f.depth))
            .collect();
        v.sort();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// Move buffers from the host's transfers, through the links and the cores, and out to the host's, until
    /// nothing can move.
    fn pump(&mut self) -> Result<(), String> {
        loop {
            let mut moved = false;
            let mut names: Vec<&String> = self.pending.keys().collect();
            names.sort();
            for name in names.into_iter().cloned().collect::<Vec<_>>() {
                let f = self.fifo(&name)?;
                while self.room(f) {
                    let Some(buf) = self.pending.get_mut(&name).and_then(|q| q.pop_front()) else { break };
                    self.produce(f, buf);
                    moved = true;
                }
            }
            for l in &self.design.links {
                let tile = self.fifo(&l.to[0])?.producer;
                let room = |e: &Self| l.to.iter().all(|n| e.fifo(n).is_ok_and(|f| e.room(f)));
                while l.from.iter().all(|f| self.ready(f, tile)) && room(self) {
                    let parts: Vec<Vec<f32>> = l.from.iter().map(|f| self.take(f, tile).expect("ready")).collect();
                    let joined = parts.concat();
                    // A join or a pass-through makes one buffer; a split deals the buffer out in equal parts.
                    let share = joined.len() / l.to.len();
                    for (i, name) in l.to.iter().enumerate() {
                        let f = self.fifo(name)?;
                        self.produce(f, joined[i * share..(i + 1) * share].to_vec());
                    }
                    moved = true;
                }
            }
            for core in &self.design.cores {
                if let CoreBody::Attention { .. } = core.body {
                    moved |= self.attend(core)?;
                    continue;
                }
                if let CoreBody::RowPieces(rp) = core.body {
                    moved |= self.row_pieces(core, rp)?;
                    continue;
                }
                let [a, b, c] = &core.uses[..] else {
                    return Err(format!("core at {}: a body uses three fifos (two in, one out)", core.tile));
                };
                if a.port != Port::Consume || b.port != Port::Consume || c.port != Port::Produce {
                    return Err(format!("core at {}: a body consumes two fifos and produces the third", core.tile));
                }
                // Output elements, the two operands' sizes and the pairs that make one output.
                let (outs, sizes, k_tiles) = match core.body {
                    CoreBody::MatMul { m, k, n, k_tiles, .. } => (m * n, (m * k, k * n), k_tiles),
                    CoreBody::MatVec { rows, k, k_tiles } => (rows, (rows * k, k), k_tiles),
                    CoreBody::MatVecQ8 { rows, k, k_tiles } => (rows, (rows * q8::row_bytes(k), k), k_tiles),
                    CoreBody::Rows { op, rows, width } => (rows * width, (rows * width, op.second(rows, width).0), 1),
                    CoreBody::Attention { .. } | CoreBody::RowPieces(_) => unreachable!("run by their own steps"),
                };
                // A core takes its output buffer before it starts an output's products, and holds it until the
                // output is done.
                let out = self.fifo(&c.fifo)?;
                while self.ready(&a.fifo, core.tile)
                    && self.ready(&b.fifo, core.tile)
                    && (self.acc.contains_key(&core.tile) || self.room(out))
                {
                    let ta = self.take(&a.fifo, core.tile).expect("ready");
                    let tb = self.take(&b.fifo, core.tile).expect("ready");
                    if (ta.len() as u64, tb.len() as u64) != sizes {
                        return Err(format!(
                            "core at {}: buffers of {} and {} elements where its body takes {} and {}",
                            core.tile,
                            ta.len(),
                            tb.len(),
                            sizes.0,
                            sizes.1
                        ));
                    }
                    let entry = self.acc.entry(core.tile).or_insert_with(|| (vec![0.0; outs as usize], 0));
                    self.stats.macs += body(core.body, &ta, &tb, &mut entry.0);
                    entry.1 += 1;
                    if entry.1 == k_tiles {
                        let (y, _) = self.acc.remove(&core.tile).expect("accumulating");
                        self.produce(out, y);
                    }
                    moved = true;
                }
            }
            // Each transfer out takes its fifo's buffers as they arrive, the earlier transfer of a fifo first.
            for i in 0..self.drains.len() {
                let name = self.drains[i].fifo.clone();
                if self.drains[..i].iter().any(|d| d.fifo == name && d.got.len() < d.at.len()) {
                    continue;
                }
                let f = self.fifo(&name)?;
                let shim = *f.consumers.iter().find(|c| design_is_shim(c)).expect("a drained fifo ends at a shim");
                while self.drains[i].got.len() < self.drains[i].at.len() {
                    let Some(buf) = self.take(&name, shim) else { break };
                    self.drains[i].got.extend(buf);
                    moved = true;
                }
            }
            if !moved {
                return Ok(());
            }
        }
    }
}

impl Emu<'_> {
    /// Advance an attention core as far as its buffers allow: a round takes its Q block, then its tiles one
    /// by one into the rows' online softmax, then releases the rows' output. Whether anything moved.
    fn attend(&mut self, core: &crate::design::Core) -> Result<bool, String> {
        let CoreBody::Attention { q_rows, keys, head_dim, rounds, slot } = core.body else { unreachable!() };
        let (qf, kvf, of) = (&core.uses[0].fifo, &core.uses[1].fifo, &core.uses[2].fifo);
        let (qn, kn, hd) = (q_rows as usize, keys as usize, head_dim as usize);
        if !self.attn.contains_key(&core.tile) {
            // The core's rounds, and its runtime parameters read from its buffer, the first time it is pumped.
            let schedule = rounds.of(q_rows, keys);
            let (q0, kv_len) = if schedule.is_empty() { (0, 0) } else { self.attention_params(core.tile, &rounds)? };
            self.attn.insert(core.tile, AttnState { schedule, q0, kv_len, ..Default::default() });
        }
        let mut moved = false;
        loop {
            let st = self.attn.get_mut(&core.tile).expect("entered");
            let Some(round) = st.schedule.get(st.round).copied() else { return Ok(moved) };
            if st.q.is_empty() {
                let Some(q) = self.take(qf, core.tile) else { return Ok(moved) };
                if q.len() != qn * hd {
                    return Err(format!("core at {}: a Q buffer of {} elements, not {}", core.tile, q.len(), qn * hd));
                }
                let st = self.attn.get_mut(&core.tile).expect("entered");
                st.q = q;
                st.m = vec![f32::NEG_INFINITY; qn];
                st.l = vec![0.0; qn];
                st.o = vec![0.0; qn * hd];
                st.tiles = 0;
                moved = true;
                continue;
            }
            if st.tiles == round.tiles {
                let f = self.fifo(of)?;
                if !self.room(f) {
                    return Ok(moved);
                }
                let st = self.attn.get_mut(&core.tile).expect("entered");
                let out = attention_finish(&st.o, &st.l, hd);
                st.q.clear();
                st.round += 1;
                self.produce(f, out);
                moved = true;
                continue;
            }
            let Some(kv) = self.take(kvf, core.tile) else { return Ok(moved) };
            if kv.len() != 2 * kn * hd {
                return Err(format!("core at {}: a K/V tile of {} elements, not {}", core.tile, kv.len(), 2 * kn * hd));
            }
            let st = self.attn.get_mut(&core.tile).expect("entered");
            let key0 = round.key0 + st.tiles * keys;
            let pos0 = st.q0 + round.row0 + slot * q_rows;
            let tile = AttentionTile { q_rows, keys, head_dim, window: rounds.window, scale: rounds.scale };
            if tile.fold(&st.q, &kv, &mut st.m, &mut st.l, &mut st.o, key0, pos0, st.kv_len) {
                self.stats.macs += 2 * q_rows * keys * head_dim;
            }
            st.tiles += 1;
            moved = true;
        }
    }

    /// An attention core's `q0` and `kv_len`: the words of its tile's runtime parameter buffer, which its
    /// design's rounds must admit.
    fn attention_params(&self, at: Coord, rounds: &AttentionRounds) -> Result<(u64, u64), String> {
        let name = &self.design.name;
        let buf = self
            .design
            .rtp_of(at)
            .ok_or_else(|| format!("{name}: the attention core at {at} has no runtime parameters"))?;
        let word = |i: usize| -> Result<u64, String> {
            let p =
                *buf.words.get(i).ok_or_else(|| format!("{name}: core at {at}: no word {i} of runtime parameters"))?;
            let v = self.params.get(p).ok_or_else(|| {
                format!("{name}: core at {at}: word {i} holds parameter {p}, which the design does not take")
            })?;
            Ok(*v as u64)
        };
        let (q0, kv_len) = (word(0)?, word(1)?);
        rounds.admits(q0, kv_len).map_err(|e| format!("{name}: {e}"))?;
        Ok((q0, kv_len))
    }
}

impl Emu<'_> {
    /// Advance a core of rows in pieces as far as its buffers allow: pass 1 takes a row's pieces one by one
    /// (with the mask's for the softmax) into its statistics, pass 2 takes them again with the second
    /// operand's and releases each piece's output. Whether anything moved.
    fn row_pieces(&mut self, core: &crate::design::Core, rp: RowPieces) -> Result<bool, String> {
        let [a, b, c] = &core.uses[..] else {
            return Err(format!("core at {}: a body uses three fifos (two in, one out)", core.tile));
        };
        if a.port != Port::Consume || b.port != Port::Consume || c.port != Port::Produce {
            return Err(format!("core at {}: a body consumes two fifos and produces the third", core.tile));
        }
        let p = rp.piece as usize;
        let mut moved = false;
        loop {
            let st = *self.pieces.entry(core.tile).or_default();
            let reads_b = st.out || rp.stats_read_second();
            if !self.ready(&a.fifo, core.tile) || (reads_b && !self.ready(&b.fifo, core.tile)) {
                return Ok(moved);
            }
            if st.out && !self.room(self.fifo(&c.fifo)?) {
                return Ok(moved);
            }
            let x = self.take(&a.fifo, core.tile).expect("ready");
            let sb = if reads_b { self.take(&b.fifo, core.tile).expect("ready") } else { Vec::new() };
            if x.len() != p || (reads_b && sb.len() != p) {
                return Err(format!(
                    "core at {}: pieces of {} and {} elements where its body takes {p}",
                    core.tile,
                    x.len(),
                    sb.len()
                ));
            }
            let st = self.pieces.get_mut(&core.tile).expect("entered");
            if st.out {
                let mut y = vec![0.0; p];
                rp.out(st.piece, &x, &sb, &st.stats, &mut y);
                let f = self.fifo(&c.fifo)?;
                self.produce(f, y);
            } else {
                rp.stats(st.piece, &x, &sb, &mut st.stats);
            }
            let st = self.pieces.get_mut(&core.tile).expect("entered");
            st.piece += 1;
            if st.piece == rp.pieces() {
                st.piece = 0;
                st.out = !st.out;
            }
            moved = true;
        }
    }
}

/// A core of rows in pieces: in which pass (`out`: the second) and at which piece of its row it is, and the
/// row's statistics.
#[derive(Debug, Clone, Copy, Default)]
struct PiecesState {
    out: bool,
    piece: u64,
    stats: [f32; 2],
}

/// One K/V tile of an attention core's round: the shape and mask it folds a tile with.
#[derive(Debug, Clone, Copy)]
pub struct AttentionTile {
    pub q_rows: u64,
    pub keys: u64,
    pub head_dim: u64,
    /// 0: none.
    pub window: u64,
    pub scale: f32,
}

impl AttentionTile {
    /// The first key a row at position `p` sees (the window's start; 0 without a window).
    pub fn first_seen(&self, p: u64) -> u64 {
        if self.window > 0 {
            (p + 1).saturating_sub(self.window)
        } else {
            0
        }
    }

    /// Whether a block whose rows are at `pos0..` computes on the tile of keys `key0..`, given `kv_len`: some
    /// row of it is real (before `kv_len`) and some key of the tile lies within what its rows see (at or
    /// before its last real row, at or after its first row's window start). Where not, the tile is skipped:
    /// it is acquired and released, and nothing it holds is read.
    pub fn computes(&self, key0: u64, pos0: u64, kv_len: u64) -> bool {
        let last = (pos0 + self.q_rows - 1).min(kv_len.saturating_sub(1));
        pos0 < kv_len && key0 <= last && key0 + self.keys > self.first_seen(pos0)
    }

    /// Fold one tile (`kv`: `keys` keys of K, then the same keys of V) into the block's online softmax — each
    /// row's running maximum `m`, sum `l` and output `o` — for the block's rows at positions `pos0..` and the
    /// tile's keys at `key0..`, where the keys before `kv_len` hold data: scores in f32 over bf16 operands
    /// (sums in order), masked causally and by the window (a row at `p` sees keys `first_seen(p) ..= p`, and
    /// none if `p >= kv_len`: a padding row); a row that sees none of the tile's keys is left as it was; the
    /// probabilities rounded to bf16 for PV. A tile the block does not compute on ([`Self::computes`]) is left
    /// unread. Whether it computed.
    #[allow(clippy::too_many_arguments)]
    pub fn fold(
        &self,
        q: &[f32],
        kv: &[f32],
        m: &mut [f32],
        l: &mut [f32],
        o: &mut [f32],
        key0: u64,
        pos0: u64,
        kv_len: u64,
    ) -> bool {
        if !self.computes(key0, pos0, kv_len) {
            return false;
        }
        let (qn, kn, hd) = (self.q_rows as usize, self.keys as usize, self.head_dim as usize);
        let (k, v) = kv.split_at(kn * hd);
        for r in 0..qn {
            let p = pos0 + r as u64;
            if p >= kv_len {
                continue;
            }
            let first = self.first_seen(p);
            let qr = &q[r * hd..][..hd];
            let s: Vec<f32> = (0..kn)
                .map(|j| {
                    let key = key0 + j as u64;
                    if key < first || key > p {
                        return f32::NEG_INFINITY;
                    }
                    qr.iter().zip(&k[j * hd..][..hd]).fold(0.0f32, |acc, (a, b)| acc + a * b) * self.scale
                })
                .collect();
            let mx = s.iter().copied().fold(m[r], f32::max);
            if mx == f32::NEG_INFINITY {
                continue;
            }
            let corr = (m[r] - mx).exp();
            let pr: Vec<f32> = s.iter().map(|&x| (x - mx).exp()).collect();
            l[r] = l[r] * corr + pr.iter().fold(0.0f32, |acc, p| acc + p);
            for (d, od) in o[r * hd..][..hd].iter_mut().enumerate() {
                // The probabilities go into the PV product as bf16, as the mmul takes them.
                let pv = pr.iter().enumerate().fold(0.0f32, |acc, (j, &pj)| acc + bf16(pj) * v[j * hd + d]);
                *od = *od * corr + pv;
            }
            m[r] = mx;
        }
        true
    }
}

/// The rows' outputs at the end of a round: `o / l` per row, zeros for a row that saw no key.
pub fn attention_finish(o: &[f32], l: &[f32], head_dim: usize) -> Vec<f32> {
    o.iter().enumerate().map(|(e, &v)| if l[e / head_dim] > 0.0 { v / l[e / head_dim] } else { 0.0 }).collect()
}

/// An attention core's state within its rounds.
#[derive(Default)]
struct AttnState {
    schedule: Vec<crate::design::AttentionRound>,
    /// The dispatch's runtime parameters, as the core read them.
    q0: u64,
    kv_len: u64,
    round: usize,
    /// The round's Q block (empty before it is taken), its rows' running maximum, sum and output.
    q: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    o: Vec<f32>,
    /// Tiles of the round folded in.
    tiles: u64,
}

/// One step of a core's body: its two operand buffers folded into its accumulator; the MACs it took.
pub fn body(b: CoreBody, ta: &[f32], tb: &[f32], acc: &mut [f32]) -> u64 {
    match b {
        CoreBody::MatMul { m, k, n, bt, .. } => {
            let (m, k, n) = (m as usize, k as usize, n as usize);
            // The mmul's steps: per 8-deep block of `k` in order, each output's eight products summed from 0 in
            // order, then added to what it held (as the core's `vector.contract` of a 4 x 8 by an 8 x 4 block
            // into its 4 x 4 accumulator computes it). The designs' bodies are whole blocks (the AIE2 rules
            // hold them to it); a last partial block is summed the same way.
            let kb = k.div_ceil(8);
            for r in 0..m {
                for col in 0..n {
                    let mut s = acc[r * n + col];
                    for kq in 0..kb {
                        let mut p = 0.0f32;
                        for kr in 0..(k - kq * 8).min(8) {
                            // A in 4 x 8 blocks, B in 8 x 4 blocks (B transposed in 4 x 8 blocks), each block
                            // row-major, blocks row after row.
                            let ai = ((r / 4) * kb + kq) * 32 + (r % 4) * 8 + kr;
                            let bi = if bt {
                                ((col / 4) * kb + kq) * 32 + (col % 4) * 8 + kr
                            } else {
                                (kq * (n / 4) + col / 4) * 32 + kr * 4 + col % 4
                            };
                            p += ta[ai] * tb[bi];
                        }
                        s += p;
                    }
                    acc[r * n + col] = s;
                }
            }
            (m * n * k) as u64
        }
        CoreBody::MatVec { rows, k, .. } => {
            let (rows, k) = (rows as usize, k as usize);
            for (r, y) in acc.iter_mut().enumerate().take(rows) {
                let mut s = *y;
                for (w, x) in ta[r * k..][..k].iter().zip(tb) {
                    s += w * x;
                }
                *y = s;
            }
            (rows * k) as u64
        }
        CoreBody::MatVecQ8 { rows, k, .. } => {
            let (rows, rb, bb, bk) = (rows as usize, q8::row_bytes(k) as usize, q8::BLOCK_BYTES as usize, q8::BLOCK);
            for (r, y) in acc.iter_mut().enumerate().take(rows) {
                let mut s = *y;
                for (blk, xs) in ta[r * rb..][..rb].chunks(bb).zip(tb.chunks(bk as usize)) {
                    let d = q8::scale(blk[0], blk[1]);
                    let p = blk[2..].iter().zip(xs).fold(0.0f32, |acc, (q, x)| acc + q * x);
                    s += d * p;
                }
                *y = s;
            }
            (rows as u64) * k
        }
        CoreBody::Attention { .. } => unreachable!("attention cores are run by attend"),
        CoreBody::RowPieces(_) => unreachable!("cores of rows in pieces are run by row_pieces"),
        CoreBody::Rows { op, rows, width } => {
            let w = width as usize;
            for r in 0..rows as usize {
                let (x, y) = (&ta[r * w..][..w], &mut acc[r * w..][..w]);
                match op {
                    RowOp::RmsNorm { eps } => {
                        let ss: f32 = x.iter().map(|v| v * v).sum();
                        let inv = 1.0 / (ss / width as f32 + eps).sqrt();
                        for ((o, v), g) in y.iter_mut().zip(x).zip(tb) {
                            *o = v * inv * g;
                        }
                    }
                    RowOp::SiluGlu => {
                        for ((o, g), u) in y.iter_mut().zip(x).zip(&tb[r * w..][..w]) {
                            *o = g / (1.0 + (-g).exp()) * u;
                        }
                    }
                    RowOp::Rope { head_dim } => {
                        let (hd, half) = (head_dim as usize, head_dim as usize / 2);
                        let (cos, sin) = tb[r * hd..][..hd].split_at(half);
                        for (yh, xh) in y.chunks_mut(hd).zip(x.chunks(hd)) {
                            for f in 0..half {
                                let (a, b) = (xh[f], xh[f + half]);
                                yh[f] = a * cos[f] - b * sin[f];
                                yh[f + half] = b * cos[f] + a * sin[f];
                            }
                        }
                    }
                    RowOp::Softmax { scale } => {
                        let mask = &tb[r * w..][..w];
                        let z: Vec<f32> = x.iter().zip(mask).map(|(v, m)| v * scale + m).collect();
                        let mx = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        if mx == f32::NEG_INFINITY {
                            y.fill(0.0);
                            continue;
                        }
                        let mut sum = 0.0f32;
                        for (o, v) in y.iter_mut().zip(&z) {
                            *o = (v - mx).exp();
                            sum += *o;
                        }
                        y.iter_mut().for_each(|o| *o /= sum);
                    }
                }
            }
            0
        }
    }
}

/// Run one dispatch of `design` over its runtime arguments (`args[i]` holds argument `i` as f32; a bf16
/// argument's values are rounded to bf16 as they are read; an i8 argument holds bytes, each the signed value
/// -128..=127 of the byte, and anything else in it is an error). Results are written into the arguments. A
/// design with runtime parameters is run by [`run_with`].
pub fn run(design: &Design, args: &mut [Vec<f32>]) -> Result<EmuStats, String> {
    run_with(design, args, &[])
}

/// A runtime argument's values on the host, as a dispatch reads them and writes its results into them.
pub trait HostArg {
    fn values(&self) -> &[f32];
    fn values_mut(&mut self) -> &mut [f32];
}

impl HostArg for Vec<f32> {
    fn values(&self) -> &[f32] {
        self
    }

    fn values_mut(&mut self) -> &mut [f32] {
        self
    }
}

/// An argument the caller lends: a design that only reads it (an operand) reads the caller's values without a
/// copy; one it writes is copied first.
impl HostArg for std::borrow::Cow<'_, [f32]> {
    fn values(&self) -> &[f32] {
        self
    }

    fn values_mut(&mut self) -> &mut [f32] {
        self.to_mut()
    }
}

/// Run one dispatch of `design` as [`run`] does, with the values of its runtime parameters
/// ([`Design::params`], one each, in order). The arguments may be any [`HostArg`]: a `Cow` lends an operand
/// without copying it.
pub fn run_with<A: HostArg>(design: &Design, args: &mut [A], params: &[u32]) -> Result<EmuStats, String> {
    if params.len() != design.params.len() {
        return Err(format!(
            "{}: a dispatch takes {} runtime parameters ({}), given {}",
            design.name,
            design.params.len(),
            design.params.join(", "),
            params.len()
        ));
    }
    let mut e = Emu {
        design,
        queues: HashMap::new(),
        acc: HashMap::new(),
        attn: HashMap::new(),
        pieces: HashMap::new(),
        params,
        partial: HashMap::new(),
        pending: HashMap::new(),
        drains: Vec::new(),
        stats: EmuStats::default(),
    };
    e.stats.dispatches = 1;
    for op in &design.sequence {
        match op {
            SeqOp::Memcpy { arg, elem, offset, dims, fifo, .. } => {
                let f = e.fifo(fifo)?;
                let at = walk(*offset, dims);
                let host =
                    args.get(*arg).ok_or_else(|| format!("{}: no runtime argument {arg}", design.name))?.values();
                if let Some(&past) = at.iter().find(|&&i| i as usize >= host.len()) {
                    return Err(format!(
                        "{}: transfer of fifo {fifo} reaches element {past} of argument {arg} ({})",
                        design.name,
                        host.len()
                    ));
                }
                e.stats.host_bytes += at.len() as u64 * elem.bytes();
                if design_is_shim(&f.producer) {
                    let round = *elem == Elem::Bf16;
                    let byte = |v: f32| v.fract() == 0.0 && (-128.0..=127.0).contains(&v);
                    if let Some(&i) = at.iter().find(|&&i| *elem == Elem::I8 && !byte(host[i as usize])) {
                        return Err(format!(
                            "{}: transfer of fifo {fifo} reads {} at element {i} of argument {arg}, which holds bytes",
                            design.name, host[i as usize]
                        ));
                    }
                    let part = e.partial.entry(fifo.clone()).or_default();
                    part.extend(at.iter().map(|&i| if round { bf16(host[i as usize]) } else { host[i as usize] }));
                    // Each whole buffer of the stream goes to its fifo as it completes, when the fifo has room.
                    let size = (f.buffer_bytes() / f.elem.bytes()) as usize;
                    let mut bufs = Vec::new();
                    while part.len() >= size {
                        bufs.push(part.drain(..size).collect::<Vec<f32>>());
                    }
                    e.pending.entry(fifo.clone()).or_default().extend(bufs);
                } else {
                    e.drains.push(Drain { fifo: fifo.clone(), arg: *arg, at, got: Vec::new() });
                }
                e.pump()?;
            }
            SeqOp::Wait { fifo } => {
                e.pump()?;
                if let Some(d) = e.drains.iter().find(|d| &d.fifo == fifo && d.got.len() < d.at.len()) {
                    return Err(format!(
                        "{}: a wait on fifo {fifo} for {} elements, of which the array produced {}: nothing can \
                         move (fifos full: {})",
                        design.name,
                        d.at.len(),
                        d.got.len(),
                        e.full()
                    ));
                }
                let (done, rest): (Vec<Drain>, Vec<Drain>) =
                    std::mem::take(&mut e.drains).into_iter().partition(|d| &d.fifo == fifo);
                e.drains = rest;
                for d in done {
                    let host = args[d.arg].values_mut();
                    for (&i, v) in d.at.iter().zip(d.got) {
                        host[i as usize] = v;
                    }
                }
            }
        }
    }
    if let Some(d) = e.drains.first() {
        return Err(format!("{}: a transfer of fifo {} is never waited on", design.name, d.fifo));
    }
    if let Some((name, p)) = e.partial.iter().find(|(_, p)| !p.is_empty()) {
        return Err(format!("{}: transfers into fifo {name} end {} elements into a buffer", design.name, p.len()));
    }
    Ok(e.stats)
}

fn design_is_shim(c: &Coord) -> bool {
    c.row == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two cores share a broadcast operand `a`; the host sends the first core's other operand, waits for its
    /// results, and only then sends the second's. With `a` two deep both of its buffers reach both cores and
    /// the first finishes; one deep, the second core's unread copy of `a` holds the fifo, its next buffer
    /// cannot leave, and the first core never gets it: the array stops, as it would on the chip.
    #[test]
    fn a_broadcast_backs_up_into_a_deadlock_at_depth_one_and_not_at_two() {
        use crate::design::{dims, tile, Core, FifoUse};
        let design = |depth: u32| {
            let fifo = |name: &str, from: Coord, to: &[Coord], depth: u32| ObjectFifo {
                name: name.into(),
                producer: from,
                consumers: to.to_vec(),
                depth,
                shape: vec![1],
                elem: Elem::F32,
                to_stream: Vec::new(),
            };
            let (shim, c1, c2) = (tile(0, 0), tile(0, 2), tile(1, 2));
            let core = |at: Coord, b: &str, c: &str| Core {
                tile: at,
                locals_bytes: 0,
                stack_bytes: None,
                uses: [("a", Port::Consume), (b, Port::Consume), (c, Port::Produce)]
                    .map(|(f, port)| FifoUse { fifo: f.into(), port, acquire: 1 })
                    .to_vec(),
                body: CoreBody::MatMul { m: 1, k: 1, n: 1, k_tiles: 1, bt: false },
            };
            let copy = |arg: usize, fifo: &str| SeqOp::Memcpy {
                arg,
                elem: Elem::F32,
                offset: 0,
                dims: dims(&[(2, 1)]),
                fifo: fifo.into(),
                bd: arg as u32,
            };
            let wait = |fifo: &str| SeqOp::Wait { fifo: fifo.into() };
            Design {
                name: "broadcast".into(),
                fifos: vec![
                    fifo("a", shim, &[c1, c2], depth),
                    fifo("b1", shim, &[c1], 2),
                    fifo("b2", shim, &[c2], 2),
                    fifo("y1", c1, &[shim], 2),
                    fifo("y2", c2, &[shim], 2),
                ],
                links: Vec::new(),
                cores: vec![core(c1, "b1", "y1"), core(c2, "b2", "y2")],
                sequence: vec![
                    copy(0, "a"),
                    copy(1, "b1"),
                    copy(3, "y1"),
                    wait("y1"),
                    copy(2, "b2"),
                    copy(4, "y2"),
                    wait("y2"),
                ],
                params: Vec::new(),
                rtp: Vec::new(),
            }
        };
        let args = || vec![vec![2.0, 3.0], vec![5.0, 7.0], vec![11.0, 13.0], vec![0.0; 2], vec![0.0; 2]];
        let mut two = args();
        run(&design(2), &mut two).expect("two deep: no deadlock");
        assert_eq!((&two[3][..], &two[4][..]), (&[10.0, 21.0][..], &[22.0, 39.0][..]));
        let err = run(&design(1), &mut args()).expect_err("one deep: the array stops");
        assert!(err.contains("a wait on fifo y1 for 2 elements, of which the array produced 1"), "{err}");
        assert!(err.contains("fifos full: a at tile(1, 2) (depth 1)"), "{err}");
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 1.0);
        // 1 + 2^-8 lies halfway between bf16 1.0 and 1 + 2^-7: to the even one, 1.0.
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(bf16(-2.5), -2.5);
    }
}
