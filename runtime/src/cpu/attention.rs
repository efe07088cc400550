//! Causal (optionally windowed, grouped-query) attention over the KV cache and this execution's rows, with
//! the vectorizable reductions it is built from. All arithmetic is f32, as in the float32 reference.

use super::isa::vectorized_fn;
use super::kv::{KvCache, KvStore};
use super::pool::{parallel_chunks_mut, parallel_for, SendPtr};

/// Geometry of one attention op.
#[derive(Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: Option<usize>,
    pub scale: f32,
}

impl AttnShape {
    /// The cache positions the query at position `p` attends to: all up to `p`, or the last `window` of them.
    fn keys(&self, p: usize) -> std::ops::Range<usize> {
        self.window.map_or(0, |w| (p + 1).saturating_sub(w))..p + 1
    }
}

/// Dot product with 32 independent partial sums (four 8-lane vectors, so that four multiply-adds are in flight
/// where one running sum would wait on each add's latency), then eight: the compiler keeps them in vector
/// registers. (Multiply, then add: `f32::mul_add` would be a libm call in `vectorized_fn!`'s portable instance.)
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n32 = a.len() / 32 * 32;
    let mut acc = [0f32; 32];
    for (x, y) in a[..n32].chunks_exact(32).zip(b[..n32].chunks_exact(32)) {
        for i in 0..32 {
            acc[i] += x[i] * y[i];
        }
    }
    let n8 = a.len() / 8 * 8;
    let mut acc8 = [0f32; 8];
    for i in 0..8 {
        acc8[i] = (acc[i] + acc[i + 8]) + (acc[i + 16] + acc[i + 24]);
    }
    for (x, y) in a[n32..n8].chunks_exact(8).zip(b[n32..n8].chunks_exact(8)) {
        for i in 0..8 {
            acc8[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a[n8..].iter().zip(&b[n8..]).map(|(x, y)| x * y).sum();
    acc8.iter().sum::<f32>() + tail
}

/// Keys whose values [`attend`] folds in at a time: each output chunk's sums stay in registers over them.
const VALUE_BLOCK: usize = 32;
/// Heads of scratch [`attend`] takes: a key, and a block of values.
const TMP_HEADS: usize = 1 + VALUE_BLOCK;

/// `o += sum over t of e[t] * v[t]` for the `e.len()` rows `v[t]` (each `o.len()` long, starting `ld` apart),
/// in chunks of 64 outputs (then 32, then one by one) whose sums stay in vector registers across the rows: one
/// load and store of `o` per chunk and call rather than per row, and eight independent chains of multiply-adds
/// (enough to cover their latency). Row by row in order, so the sums do not depend on the chunk.
#[inline(always)]
fn fold_values(o: &mut [f32], e: &[f32], v: &[f32], ld: usize) {
    #[inline(always)]
    fn chunk<const W: usize>(o: &mut [f32], e: &[f32], v: &[f32], ld: usize, d0: usize) {
        let mut acc: [f32; W] = o[d0..d0 + W].try_into().expect("a chunk of outputs");
        for (t, &w) in e.iter().enumerate() {
            let vt = &v[t * ld + d0..][..W];
            for i in 0..W {
                acc[i] += w * vt[i];
            }
        }
        o[d0..d0 + W].copy_from_slice(&acc);
    }
    let hd = o.len();
    let mut d0 = 0;
    while d0 + 64 <= hd {
        chunk::<64>(o, e, v, ld, d0);
        d0 += 64;
    }
    if d0 + 32 <= hd {
        chunk::<32>(o, e, v, ld, d0);
        d0 += 32;
    }
    for (t, &w) in e.iter().enumerate() {
        for (a, &x) in o[d0..].iter_mut().zip(&v[t * ld + d0..t * ld + hd]) {
            *a += w * x;
        }
    }
}

/// Maximum of a slice, in eight lanes (a fold over `f32::max` does not vectorize).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let n = x.len() / 8 * 8;
    let mut m = [f32::NEG_INFINITY; 8];
    for c in x[..n].chunks_exact(8) {
        for i in 0..8 {
            m[i] = if c[i] > m[i] { c[i] } else { m[i] };
        }
    }
    x[n..].iter().chain(&m).fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// `x[i] = e^(x[i] - m)` in place; returns the sum of the new values.
#[inline(always)]
fn exp_shifted_sum(x: &mut [f32], m: f32) -> f32 {
    let n = x.len() / 8 * 8;
    let mut acc = [0f32; 8];
    let (body, tail) = x.split_at_mut(n);
    for c in body.chunks_exact_mut(8) {
        for i in 0..8 {
            c[i] = exp_f32(c[i] - m);
            acc[i] += c[i];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for v in tail {
        *v = exp_f32(*v - m);
        sum += *v;
    }
    sum
}

thread_local! {
    /// A task's scores (and per-head statistics), reused across calls so attention allocates nothing per token.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Partial results of split rows (see [`attention`]), reused likewise.
    static PARTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// This execution's values, head-major (see [`attention`]), reused likewise.
    static VALUE_HEADS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Where attention finds the keys and values of a position: the cache before `start`, this execution's rows
/// from `start` on.
struct KvSource<'a> {
    cache: &'a KvCache,
    k: &'a [f32],
    v: &'a [f32],
    start: usize,
    /// This execution's values head-major (kv head `g`'s rows consecutive, `rows` per head), where it has
    /// several rows.
    v_heads: Option<&'a [f32]>,
}

impl KvSource<'_> {
    /// The values of kv head `g` for positions `pos..pos + n` as consecutive rows, where they are so in memory:
    /// this execution's (head-major), or an f32 cache's with no wrap of the ring between them; `None` otherwise.
    #[inline(always)]
    fn values_in_place(&self, pos: usize, n: usize, g: usize) -> Option<&[f32]> {
        let hd = self.cache.head_dim;
        if let Some(vh) = self.v_heads.filter(|_| pos >= self.start) {
            let rows = vh.len() / (self.cache.kv_heads * hd);
            let at = (g * rows + pos - self.start) * hd;
            return Some(&vh[at..at + n * hd]);
        }
        let (first, last) = (self.cache.at(g, pos), self.cache.at(g, pos + n - 1));
        match &self.cache.v {
            KvStore::F32(v) if pos + n <= self.start && last == first + (n - 1) * hd => Some(&v[first..last + hd]),
            _ => None,
        }
    }

    /// The value of kv head `g` for position `pos` into `dst` (`head_dim` long).
    #[inline(always)]
    fn value_into(&self, pos: usize, g: usize, dst: &mut [f32]) {
        let hd = self.cache.head_dim;
        if pos < self.start {
            self.cache.v.read_into(self.cache.at(g, pos), dst);
        } else {
            let row = (pos - self.start) * self.cache.kv_heads * hd + g * hd;
            dst.copy_from_slice(&self.v[row..row + hd]);
        }
    }

    /// Key (`value` false) or value of kv head `g` for position `pos`; `tmp` is `head_dim` long.
    #[inline(always)]
    fn get<'s>(&'s self, pos: usize, g: usize, value: bool, tmp: &'s mut [f32]) -> &'s [f32] {
        let hd = self.cache.head_dim;
        if pos < self.start {
            let store = if value { &self.cache.v } else { &self.cache.k };
            store.read(self.cache.at(g, pos), tmp)
        } else {
            let row = (pos - self.start) * self.cache.kv_heads * hd + g * hd;
            &(if value { self.v } else { self.k })[row..row + hd]
        }
    }
}

vectorized_fn! {
    /// The query heads `qg` (`m.len()` heads of `hd`, sharing kv head `g`) against the keys at
    /// `positions`: per head `h`, `m[h]` the largest score, `l[h]` the sum of `e^(score - m[h])`, and `o[h]` the
    /// sum of `e^(score - m[h]) v` (not divided by `l[h]`: the parts of a split row are merged after). Each key
    /// and value is read once for the group. `scores` holds at least `m.len() * positions.len()` values, `tmp`
    /// [`TMP_HEADS`] heads.
    fn attend(
        qg: &[f32],
        kv: &KvSource<'_>,
        g: usize,
        positions: std::ops::Range<usize>,
        scale: f32,
        scores: &mut [f32],
        o: &mut [f32],
        m: &mut [f32],
        l: &mut [f32],
        tmp: &mut [f32],
    ) {
        let hd = qg.len() / m.len();
        let n = positions.len();
        o.fill(0.0);
        if n == 0 {
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            return;
        }
        // scores[h * n + j]: query head h against key positions.start + j.
        let scores = &mut scores[..m.len() * n];
        for (j, pos) in positions.clone().enumerate() {
            let kj = kv.get(pos, g, false, &mut tmp[..hd]);
            for (h, qh) in qg.chunks_exact(hd).enumerate() {
                scores[h * n + j] = dot(qh, kj) * scale;
            }
        }
        for (h, sc) in scores.chunks_exact_mut(n).enumerate() {
            m[h] = max_of(sc);
            l[h] = exp_shifted_sum(sc, m[h]);
        }
        // The values in blocks: gathered (and widened from f16) into `tmp`, then folded into each head's sums.
        let mut j0 = 0;
        while j0 < n {
            let b = VALUE_BLOCK.min(n - j0);
            let pos0 = positions.start + j0;
            let block = match kv.values_in_place(pos0, b, g) {
                Some(view) => view,
                None => {
                    for (t, dst) in tmp[hd..hd + b * hd].chunks_exact_mut(hd).enumerate() {
                        kv.value_into(pos0 + t, g, dst);
                    }
                    &tmp[hd..hd + b * hd]
                }
            };
            for (h, oh) in o.chunks_exact_mut(hd).enumerate() {
                fold_values(oh, &scores[h * n + j0..h * n + j0 + b], block, hd);
            }
            j0 += b;
        }
    }
}

/// Queries a prefill task ([`attend_tile`]) takes at least: its rows' query heads of one kv head, which share
/// each key block's transposition (a scalar store per element) and each value row's loads. 128 queries make
/// the transposition a sixteenth of the scores' work or less (32 rows at Llama's 4 heads a group, 64 at Qwen3's
/// 2).
const TILE_QUERIES: usize = 128;
/// Scores a prefill task holds at most (1 MiB of f32, within a core's L2), which bounds its queries at long
/// contexts: 64 over 4,096 keys.
const TILE_SCORES: usize = 1 << 18;
/// Keys of a block of scores: a query's scores of a block are two 8-lane (one 16-lane) sums in registers.
const KEY_BLOCK: usize = 16;
/// Keys of a block of scores where a tile has fewer than four queries (a decode row of a small group): four
/// times as many independent sums as [`KEY_BLOCK`], so that one query's multiply-adds do not wait on each other.
const WIDE_KEY_BLOCK: usize = 64;

/// `a * b + c`, fused where `FMA` (an instance compiled with FMA: one rounding, one instruction), else a
/// multiply and an add (`f32::mul_add` without FMA is a libm call per element).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `acc[a][i] += sum over t < n of x[a * ldx + t] * r[t * ldr + i]` for `A` rows of `x` and `W` columns of
/// `r`: per `t`, one load of `r`'s row and a broadcast per row of `x` feed `A x W` multiply-adds into sums that
/// stay in registers. Both halves of attention are this product: scores (`x` the queries, `r` a block of keys
/// transposed) and the values' sums (`x` the weights, `r` the values).
#[inline(always)]
fn rank_updates<const A: usize, const W: usize, const FMA: bool>(
    acc: &mut [[f32; W]; A],
    x: &[f32],
    ldx: usize,
    r: &[f32],
    ldr: usize,
    n: usize,
) {
    let xa: [&[f32]; A] = std::array::from_fn(|a| &x[a * ldx..][..n]);
    for t in 0..n {
        let row = &r[t * ldr..][..W];
        for a in 0..A {
            let w = xa[a][t];
            for i in 0..W {
                acc[a][i] = madd::<FMA>(w, row[i], acc[a][i]);
            }
        }
    }
}

/// `s[a * ld + j] = sum over d of q[a * hd + d] * kt[d * KB + j]` for `A` queries (rows of `q`) and the `KB`
/// keys of `kt` (transposed: key `j`'s element `d` at `d * KB + j`), with no horizontal sums. Each score is one
/// chain of multiply-adds over `d`, whatever `A` and `KB`.
#[inline(always)]
fn score_block<const A: usize, const KB: usize, const FMA: bool>(
    q: &[f32],
    hd: usize,
    kt: &[f32],
    s: &mut [f32],
    ld: usize,
) {
    let mut acc = [[0f32; KB]; A];
    rank_updates::<A, KB, FMA>(&mut acc, q, hd, kt, KB, hd);
    for (a, sums) in acc.iter().enumerate() {
        s[a * ld..][..KB].copy_from_slice(sums);
    }
}

/// The weights and values a block of keys folds into the sums: `p` (a query's weights, `ld` apart from the
/// next query's) of `b` value rows `v` (each `hd` long).
struct ValueBlock<'a> {
    p: &'a [f32],
    ld: usize,
    v: &'a [f32],
    b: usize,
}

/// The sums of `W` outputs from `d0` of `A` queries (rows of `o`, `hd` apart), held in registers across the
/// block's value rows. (A function, not a closure: closures are not inlined for certain, and outside the
/// vector instances a multiply-add is a libm call.)
#[inline(always)]
fn value_chunk<const A: usize, const W: usize, const FMA: bool>(o: &mut [f32], hd: usize, d0: usize, x: &ValueBlock) {
    let mut acc: [[f32; W]; A] = std::array::from_fn(|a| o[a * hd + d0..][..W].try_into().expect("W outputs"));
    rank_updates::<A, W, FMA>(&mut acc, x.p, x.ld, &x.v[d0..], hd, x.b);
    for (a, sums) in acc.iter().enumerate() {
        o[a * hd + d0..][..W].copy_from_slice(sums);
    }
}

/// `o[a * hd + d] += sum over t < b of p[a * ld + t] * v[t * hd + d]` for `A` queries: 16 outputs at a time,
/// then 8, then one by one.
#[inline(always)]
fn fold_value_block<const A: usize, const FMA: bool>(
    o: &mut [f32],
    hd: usize,
    p: &[f32],
    ld: usize,
    v: &[f32],
    b: usize,
) {
    let x = ValueBlock { p, ld, v, b };
    let mut d0 = 0;
    // A single query has a chain of multiply-adds per output: 64 outputs at a time keep enough of them in flight.
    while A == 1 && d0 + 64 <= hd {
        value_chunk::<A, 64, FMA>(o, hd, d0, &x);
        d0 += 64;
    }
    while d0 + 16 <= hd {
        value_chunk::<A, 16, FMA>(o, hd, d0, &x);
        d0 += 16;
    }
    if d0 + 8 <= hd {
        value_chunk::<A, 8, FMA>(o, hd, d0, &x);
        d0 += 8;
    }
    for a in 0..A {
        for t in 0..b {
            let w = p[a * ld + t];
            for d in d0..hd {
                o[a * hd + d] = madd::<FMA>(w, v[t * hd + d], o[a * hd + d]);
            }
        }
    }
}

/// One prefill task ([`TileTask`]): this execution's rows `rows` (at positions `kv.start + r`) against kv head `g`, all
/// the query heads of the group, as small matrix products. The keys the rows see are taken in blocks of
/// [`KEY_BLOCK`], each transposed once and scored against every query of the task ([`score_block`]); each
/// query's softmax is taken over exactly its own keys (the block's others get weight 0); the values are
/// folded in blocks of [`VALUE_BLOCK`] into four queries' sums at a time (eight on 16-lane vectors; [`fold_value_block`]). A query's
/// scores and sums are computed in the same order whatever the task's other rows, so the result does not
/// depend on the tiling. The outputs are left at the start of `buf` ([`tile_scratch`] long), row by row
/// the group's heads (`rows.len() x group x head_dim`).
fn attend_tile(t: &TileTask<'_>, buf: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::isa::Isa;
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn avx2(t: &TileTask<'_>, buf: &mut [f32]) {
            tile_of::<true, 4>(t, buf)
        }
        // 16-lane vectors: a key block's scores are one vector a query, so eight queries a step keep eight
        // chains of multiply-adds in flight, as four queries of two 8-lane vectors do above.
        #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,f16c")]
        unsafe fn avx512(t: &TileTask<'_>, buf: &mut [f32]) {
            tile_of::<true, 8>(t, buf)
        }
        match Isa::detect() {
            // SAFETY: detect() returns these families only when the CPU has AVX-512 F, VL and BW (and AVX2, FMA
            // and F16C).
            Isa::Avx512 | Isa::Amx => return unsafe { avx512(t, buf) },
            // SAFETY: detect() returns an AVX2 family only when the CPU has AVX2, FMA and F16C.
            Isa::Avx2 | Isa::Avx512Vnni => return unsafe { avx2(t, buf) },
            Isa::Portable => {}
        }
    }
    tile_of::<false, 4>(t, buf)
}

/// [`tile`] with the key block its queries' count calls for: [`WIDE_KEY_BLOCK`] below four queries.
#[inline(always)]
fn tile_of<const FMA: bool, const STEP: usize>(t: &TileTask<'_>, buf: &mut [f32]) {
    if t.rows.len() * (t.s.heads / t.s.kv_heads) < 4 {
        tile::<FMA, STEP, WIDE_KEY_BLOCK>(t, buf)
    } else {
        tile::<FMA, STEP, KEY_BLOCK>(t, buf)
    }
}

/// What a prefill task of [`attend_tile`] computes: `rows` of `q` against kv head `g` of `kv`.
struct TileTask<'a> {
    q: &'a [f32],
    kv: &'a KvSource<'a>,
    s: AttnShape,
    g: usize,
    rows: std::ops::Range<usize>,
}

/// [`attend_tile`]'s body: with `FMA`, its multiply-adds fused (the instances compiled with FMA); `STEP` queries
/// a kernel step.
#[inline(always)]
fn tile<const FMA: bool, const STEP: usize, const KB: usize>(t: &TileTask<'_>, buf: &mut [f32]) {
    let TileTask { q, kv, s, g, ref rows } = *t;
    let hd = s.head_dim;
    let qw = s.heads * hd;
    let group = s.heads / s.kv_heads;
    let nq = rows.len() * group;
    let span = |r: usize| s.keys(kv.start + r);
    let (lo, hi) = (span(rows.start).start, span(rows.end - 1).end);
    let n = hi - lo;
    let ld = n.div_ceil(KB) * KB;
    let (ot, rest) = buf.split_at_mut(nq * hd);
    let (qt, rest) = rest.split_at_mut(nq * hd);
    let (sc, rest) = rest.split_at_mut(nq * ld);
    let (kt, rest) = rest.split_at_mut(hd * KB);
    let (vt, inv) = rest.split_at_mut(VALUE_BLOCK * hd);
    // The queries, scaled: query (row i, head h of the group) is qt's row i * group + h.
    for (i, r) in rows.clone().enumerate() {
        let src = &q[r * qw + g * group * hd..][..group * hd];
        for (d, &x) in qt[i * group * hd..][..group * hd].iter_mut().zip(src) {
            *d = x * s.scale;
        }
    }
    for j0 in (0..ld).step_by(KB) {
        for t in 0..KB {
            let pos = lo + j0 + t;
            if pos < hi {
                let key = kv.get(pos, g, false, &mut vt[..hd]);
                for (d, &x) in key.iter().enumerate() {
                    kt[d * KB + t] = x;
                }
            } else {
                for d in 0..hd {
                    kt[d * KB + t] = 0.0;
                }
            }
        }
        let mut a = 0;
        while a + STEP <= nq {
            score_block::<STEP, KB, FMA>(&qt[a * hd..], hd, kt, &mut sc[a * ld + j0..], ld);
            a += STEP;
        }
        while a + 4 <= nq {
            score_block::<4, KB, FMA>(&qt[a * hd..], hd, kt, &mut sc[a * ld + j0..], ld);
            a += 4;
        }
        for a in a..nq {
            score_block::<1, KB, FMA>(&qt[a * hd..], hd, kt, &mut sc[a * ld + j0..], ld);
        }
    }
    for (a, row) in sc.chunks_exact_mut(ld).enumerate() {
        let keys = span(rows.start + a / group);
        let (first, last) = (keys.start - lo, keys.end - lo);
        let m = max_of(&row[first..last]);
        inv[a] = 1.0 / exp_shifted_sum(&mut row[first..last], m);
        row[..first].fill(0.0);
        row[last..].fill(0.0);
    }
    ot.fill(0.0);
    for j0 in (0..n).step_by(VALUE_BLOCK) {
        let b = VALUE_BLOCK.min(n - j0);
        let block = match kv.values_in_place(lo + j0, b, g) {
            Some(view) => view,
            None => {
                for (t, dst) in vt[..b * hd].chunks_exact_mut(hd).enumerate() {
                    kv.value_into(lo + j0 + t, g, dst);
                }
                &vt[..b * hd]
            }
        };
        let mut a = 0;
        while a + STEP <= nq {
            fold_value_block::<STEP, FMA>(&mut ot[a * hd..], hd, &sc[a * ld + j0..], ld, block, b);
            a += STEP;
        }
        while a + 4 <= nq {
            fold_value_block::<4, FMA>(&mut ot[a * hd..], hd, &sc[a * ld + j0..], ld, block, b);
            a += 4;
        }
        for a in a..nq {
            fold_value_block::<1, FMA>(&mut ot[a * hd..], hd, &sc[a * ld + j0..], ld, block, b);
        }
    }
    for (o, &f) in ot.chunks_exact_mut(hd).zip(inv.iter()) {
        o.iter_mut().for_each(|x| *x *= f);
    }
}

/// The scratch [`attend_tile`] takes for `nq` queries of `hd` over `keys` keys.
fn tile_scratch(nq: usize, hd: usize, keys: usize) -> usize {
    nq * (2 * hd + keys.div_ceil(WIDE_KEY_BLOCK) * WIDE_KEY_BLOCK + 1) + (WIDE_KEY_BLOCK + VALUE_BLOCK) * hd
}

/// Runs `f` on this thread's scratch, `len` values long.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with_borrow_mut(|buf| {
        buf.resize(buf.len().max(len), 0.0);
        f(&mut buf[..len])
    })
}

/// Fewest keys of a part when one row's keys are split.
const MIN_KEYS_PER_PART: usize = 32;
/// Fewest multiply-adds of a part (256 keys of a group of 4 query heads of 32; 32 keys of heads of 256): some
/// 15 us of work on one core, against a fixed cost of about 0.4 us per part (handing it out, zeroing its sums,
/// its share of the merge, which runs on the calling thread). Measured at 2 threads over 1040 keys of 4 x 32
/// heads: 8 parts took 6% longer than 4, and 32 parts of 32 keys 7% longer on one thread.
const MIN_MACS_PER_PART: usize = 1 << 16;
/// An attention call with fewer (row, kv head) tasks than this splits each row's keys: up to this many tasks,
/// enough to keep 16 threads busy twice over.
const SPLIT_TASKS: usize = 32;

/// Parts each row's keys are split into, for `tasks` (row, kv head) tasks whose longest row has `keys` keys,
/// each key costing `group` query heads of `head_dim` (a score and a weighted value each).
///
/// A function of the shape only, never of the worker count: the parts' maxima and sums are merged in f32, so
/// another split would change the last bits, and `--threads 1` and `--threads 8` must give the same logits.
pub fn key_parts(tasks: usize, keys: usize, group: usize, head_dim: usize) -> usize {
    if tasks >= SPLIT_TASKS {
        return 1;
    }
    let min_keys = MIN_MACS_PER_PART.div_ceil(2 * group * head_dim).max(MIN_KEYS_PER_PART);
    SPLIT_TASKS.div_ceil(tasks).min(keys / min_keys).max(1)
}

/// Causal attention for rows at positions `start..start+rows`: keys before `start` come from the cache, the
/// rest from this execution's `k`/`v`. A task serves a tile of rows and one kv head ([`attend_tile`]): all
/// the query heads of those rows sharing the kv head, so each key and value is read once per tile; the scores,
/// a max-subtracted softmax per query, then the weighted sum of the values.
///
/// Decoding has one row, and models with few kv heads (Gemma 3 1B has one) would leave threads idle: then each
/// row's keys are split into parts that run as separate tasks, each keeping its own maximum and sum, and the
/// parts are merged after (rescaling each by `e^(m_part - m)`), which gives the same softmax. How many parts
/// ([`key_parts`]) depends on the shape alone, so the result does not depend on the thread count.
///
/// A prefill's values are laid out head-major once per call (as the cache holds them), so that each task folds
/// its kv head's values straight from consecutive rows rather than gathering its own copy of them.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], cache: &KvCache, start: usize, s: AttnShape, out: &mut [f32]) {
    let (hd, kvh) = (s.head_dim, s.kv_heads);
    let rows = v.len() / (kvh * hd);
    if rows < 2 {
        return attend_rows(q, &KvSource { cache, k, v, start, v_heads: None }, s, out);
    }
    VALUE_HEADS.with_borrow_mut(|vh| {
        vh.clear();
        vh.resize(v.len(), 0.0);
        for (r, row) in v.chunks_exact(kvh * hd).enumerate() {
            for (g, head) in row.chunks_exact(hd).enumerate() {
                vh[(g * rows + r) * hd..][..hd].copy_from_slice(head);
            }
        }
        attend_rows(q, &KvSource { cache, k, v, start, v_heads: Some(vh) }, s, out)
    })
}

/// [`attention`] over its source of keys and values.
fn attend_rows(q: &[f32], kv: &KvSource<'_>, s: AttnShape, out: &mut [f32]) {
    let hd = s.head_dim;
    let qw = s.heads * hd;
    let group = s.heads / s.kv_heads;
    let rows = out.len() / qw;
    let start = kv.start;
    if rows == 0 {
        return;
    }
    let span = |r: usize| s.keys(start + r);
    let tasks = rows * s.kv_heads;
    let parts = key_parts(tasks, span(rows - 1).len(), group, hd);
    if parts == 1 {
        // Tasks of up to `tile_rows` rows and one kv head, which write their own heads of their own rows. Every
        // row goes this way, one or many, so a query's result is the same whether its prompt runs in one
        // execution or in chunks (or token by token).
        let tile_rows = TILE_QUERIES.min(TILE_SCORES / span(rows - 1).len()).div_ceil(group).max(1);
        let tiles = rows.div_ceil(tile_rows);
        let base = SendPtr(out.as_mut_ptr());
        parallel_for(tiles * s.kv_heads, |i| {
            let (tile, g) = (i / s.kv_heads, i % s.kv_heads);
            let (r0, r1) = (tile * tile_rows, ((tile + 1) * tile_rows).min(rows));
            let keys = span(r1 - 1).end - span(r0).start;
            with_scratch(tile_scratch((r1 - r0) * group, hd, keys), |buf| {
                attend_tile(&TileTask { q, kv, s, g, rows: r0..r1 }, buf);
                for (r, heads) in (r0..r1).zip(buf.chunks_exact(group * hd)) {
                    // SAFETY: kv head g's heads of row r of `out`, which outlives the loop: no other task has
                    // both this row and this kv head, so the pieces the tasks write are disjoint.
                    let dst =
                        unsafe { std::slice::from_raw_parts_mut(base.get().add(r * qw + g * group * hd), group * hd) };
                    dst.copy_from_slice(heads);
                }
            });
        });
        return;
    }
    // Each part: o (group * hd), then m and l (group each).
    let width = group * hd + 2 * group;
    PARTS.with_borrow_mut(|buf| {
        buf.clear();
        buf.resize(tasks * parts * width, 0.0);
        parallel_chunks_mut(buf, width, |i, piece| {
            let (rg, part) = (i / parts, i % parts);
            let (r, g) = (rg / s.kv_heads, rg % s.kv_heads);
            let keys = span(r);
            let n = keys.len();
            let lo = keys.start + n * part / parts;
            let hi = keys.start + n * (part + 1) / parts;
            let qg = &q[r * qw + g * group * hd..][..group * hd];
            let (o, ml) = piece.split_at_mut(group * hd);
            let (m, l) = ml.split_at_mut(group);
            with_scratch(group * (hi - lo) + TMP_HEADS * hd, |buf| {
                let (scores, tmp) = buf.split_at_mut(group * (hi - lo));
                attend(qg, kv, g, lo..hi, s.scale, scores, o, m, l, tmp)
            });
        });
        for (rg, pieces) in buf.chunks_exact(parts * width).enumerate() {
            let (r, g) = (rg / s.kv_heads, rg % s.kv_heads);
            let dst = &mut out[r * qw + g * group * hd..][..group * hd];
            dst.fill(0.0);
            for h in 0..group {
                let m_of = |p: &[f32]| p[group * hd + h];
                let mx = pieces.chunks_exact(width).map(m_of).fold(f32::NEG_INFINITY, f32::max);
                let mut l = 0.0;
                for p in pieces.chunks_exact(width) {
                    // A part with no keys has m = -inf and contributes nothing.
                    let f = if m_of(p) == f32::NEG_INFINITY { 0.0 } else { (m_of(p) - mx).exp() };
                    l += f * p[group * hd + group + h];
                    for (d, &x) in dst[h * hd..(h + 1) * hd].iter_mut().zip(&p[h * hd..(h + 1) * hd]) {
                        *d += f * x;
                    }
                }
                dst[h * hd..(h + 1) * hd].iter_mut().for_each(|d| *d /= l);
            }
        }
    });
}

/// e^x for f32 in plain arithmetic the compiler can vectorize (libm's `expf` is a call per element): write
/// x as n ln2 plus r with |r| <= ln2/2, take e^r from its degree-6 Taylor polynomial (truncation error below
/// 1.2e-7 relative), and put 2^n straight into the exponent bits. Inputs are clamped to [-87, 88], where 2^n stays a normal float.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to the nearest integer in the mantissa.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_of_one_key_returns_its_value_and_window_limits_keys() {
        let s = AttnShape { heads: 2, kv_heads: 1, head_dim: 2, window: None, scale: 1.0 };
        let cache = KvCache::new(4, 1, 2);
        let mut out = [0.0; 4];
        attention(&[1.0, 0.0, 0.0, 1.0], &[5.0, 5.0], &[7.0, -3.0], &cache, 0, s, &mut out);
        assert_eq!(out, [7.0, -3.0, 7.0, -3.0]);

        // Two positions, equal scores: the second row averages both values; with window 1 it sees only itself.
        let (k, v) = ([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]);
        let one = AttnShape { heads: 1, ..s };
        let mut out = [0.0; 4];
        attention(&[1.0, 1.0, 1.0, 1.0], &k, &v, &cache, 0, one, &mut out);
        assert_eq!(out, [1.0, 2.0, 2.0, 3.0]);
        attention(&[1.0, 1.0, 1.0, 1.0], &k, &v, &cache, 0, AttnShape { window: Some(1), ..one }, &mut out);
        assert_eq!(out, [1.0, 2.0, 3.0, 4.0]);
    }

    /// Pseudo-random values in [-1, 1), from a seeded LCG.
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        }
    }

    /// Straightforward attention over explicit key/value lists: softmax(q.k * scale) . v per head.
    fn reference(q: &[f32], keys: &[Vec<f32>], vals: &[Vec<f32>], p: usize, s: AttnShape) -> Vec<f32> {
        let hd = s.head_dim;
        let first = s.window.map_or(0, |w| (p + 1).saturating_sub(w));
        let mut out = vec![0.0; s.heads * hd];
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            let qh = &q[h * hd..(h + 1) * hd];
            let sc: Vec<f64> = (first..=p)
                .map(|j| {
                    qh.iter().zip(&keys[j][g * hd..(g + 1) * hd]).map(|(a, b)| (a * b) as f64).sum::<f64>()
                        * s.scale as f64
                })
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = e.iter().sum();
            for (j, w) in (first..=p).zip(&e) {
                for d in 0..hd {
                    out[h * hd + d] += (w / l * vals[j][g * hd + d] as f64) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn grouped_windowed_attention_over_cache_and_new_rows_matches_the_reference() {
        let mut rnd = uniform(7);
        for window in [None, Some(3)] {
            let s = AttnShape { heads: 6, kv_heads: 2, head_dim: 8, window, scale: 0.5 };
            let (kw, qw) = (s.kv_heads * s.head_dim, s.heads * s.head_dim);
            let total = 9;
            let keys: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| rnd()).collect()).collect();
            let vals: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| rnd()).collect()).collect();
            let qs: Vec<Vec<f32>> = (0..total).map(|_| (0..qw).map(|_| rnd()).collect()).collect();
            // Positions 0..5 were run before (in the cache, a ring of 4 when windowed); 5..9 run now.
            let start = 5;
            let mut cache = KvCache::new(if window.is_some() { 4 } else { total }, s.kv_heads, s.head_dim);
            cache.append(0, &keys[..start].concat(), &vals[..start].concat());
            let mut out = vec![0.0; (total - start) * qw];
            let q = qs[start..].concat();
            attention(&q, &keys[start..].concat(), &vals[start..].concat(), &cache, start, s, &mut out);
            for (r, p) in (start..total).enumerate() {
                let want = reference(&qs[p], &keys, &vals, p, s);
                for (a, b) in out[r * qw..(r + 1) * qw].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5, "window {window:?} position {p}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn decode_rows_split_across_tasks_match_the_reference() {
        // Fewer (row, kv head) tasks than SPLIT_TASKS, so each row's keys are split into parts whose softmax
        // pieces are merged: one decode row over 6000 keys, the same through a window of 2600 whose ring has
        // wrapped twice, and 3 rows of 2 kv heads (6 tasks) through a wrapped window of 800; and a short window,
        // whose keys are too few to split; and the smallest head there is (one of 2), whose parts need 16384
        // keys each, so that the split is decided on a single task's row of 40000 keys. Some parts are far
        // larger in score than others (a ramp in q.k), which a wrong rescaling would show. Heads of 80 and 96
        // dimensions fold their values in chunks of 32 (and a rest of 16), from an f32 and an f16 cache (keys
        // and values taken at f16 precision there, so that the reference sees what the cache holds) whose ring
        // wraps inside a block of values.
        let mut rnd = uniform(11);
        for (heads, kv_heads, hd, rows, total, window, want_parts, f16) in [
            (4, 1, 16, 1, 6000, None, 11, false),
            (4, 1, 16, 1, 6000, Some(2600), 5, false),
            (6, 2, 64, 3, 2000, Some(800), 4, false),
            (4, 1, 16, 1, 300, Some(77), 1, false),
            (1, 1, 2, 1, 40000, None, 2, false),
            (2, 1, 80, 2, 700, Some(310), 1, false),
            (4, 2, 96, 1, 900, Some(700), 4, true),
        ] {
            let s = AttnShape { heads, kv_heads, head_dim: hd, window, scale: 0.25 };
            let (kw, qw) = (kv_heads * hd, heads * hd);
            let parts = key_parts(rows * kv_heads, window.unwrap_or(total).min(total), heads / kv_heads, hd);
            assert_eq!(parts, want_parts, "{rows} rows over {total} keys, window {window:?}");
            let what = format!("{heads}/{kv_heads}x{hd} heads, {rows} rows, {total} positions, window {window:?}");
            let ramp = |j: usize| j as f32 / total as f32 * 3.0;
            let at_f16 = |x: f32| if f16 { half::f16::from_f32(x).to_f32() } else { x };
            let keys: Vec<Vec<f32>> = (0..total).map(|j| (0..kw).map(|_| at_f16(rnd() + ramp(j))).collect()).collect();
            let vals: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| at_f16(rnd())).collect()).collect();
            let qs: Vec<Vec<f32>> = (0..total).map(|_| (0..qw).map(|_| rnd() + 0.5).collect()).collect();
            let start = total - rows;
            let mut cache = KvCache::with_storage(window.unwrap_or(total), kv_heads, hd, f16).unwrap();
            cache.append(0, &keys[..start].concat(), &vals[..start].concat());
            let mut out = vec![f32::NAN; rows * qw];
            let q = qs[start..].concat();
            attention(&q, &keys[start..].concat(), &vals[start..].concat(), &cache, start, s, &mut out);
            for (r, p) in (start..total).enumerate() {
                let want = reference(&qs[p], &keys, &vals, p, s);
                for (i, (a, b)) in out[r * qw..(r + 1) * qw].iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-5, "{what} ({parts} parts): position {p} [{i}] {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn prefill_tiles_of_rows_match_the_reference() {
        // Prefills run in tiles of TILE_QUERIES queries (rows x query heads of a group) by one kv head: 45 rows
        // (tiles of 32 and 13) after 40 cached positions, in heads of 64 four to a kv head; 50 rows in groups of
        // 3 (tiles of 43 and 7 rows: 129 and 21 queries, eight or four at a time and then one by one) of heads
        // of 24 (a chunk of 16 outputs and one of 8) through a window of 7; 9 rows of heads of 80 after 300
        // positions, through a window of 100 over an f16 cache whose ring has wrapped; 130 rows (tiles of 128
        // and 2) of heads of 5 (no vector chunk), one query head a kv head; 5 rows of 3 heads of 64 (15 queries:
        // eight, four, then three one at a time, their values folded 64 outputs at a time); and one decode row
        // of 2 heads of 128 through a window of 40 (under four queries: keys in blocks of WIDE_KEY_BLOCK). Each
        // query sees its own keys only: a key past its position or before its window, scored with the others of
        // its block, must weigh nothing.
        let mut rnd = uniform(13);
        for (heads, kv_heads, hd, rows, start, window, f16) in [
            (8, 2, 64, 45, 40, None, false),
            (6, 2, 24, 50, 0, Some(7), false),
            (4, 1, 80, 9, 300, Some(100), true),
            (2, 2, 5, 130, 3, None, false),
            (3, 1, 64, 5, 20, None, true),
            (2, 1, 128, 1, 50, Some(40), false),
        ] {
            let s = AttnShape { heads, kv_heads, head_dim: hd, window, scale: 0.3 };
            let (kw, qw, total) = (kv_heads * hd, heads * hd, start + rows);
            let keys_seen = window.unwrap_or(total).min(total);
            assert_eq!(key_parts(rows * kv_heads, keys_seen, heads / kv_heads, hd), 1);
            let at_f16 = |x: f32| if f16 { half::f16::from_f32(x).to_f32() } else { x };
            let keys: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| at_f16(2.0 * rnd())).collect()).collect();
            let vals: Vec<Vec<f32>> = (0..total).map(|_| (0..kw).map(|_| at_f16(rnd())).collect()).collect();
            let qs: Vec<Vec<f32>> = (0..total).map(|_| (0..qw).map(|_| rnd()).collect()).collect();
            let mut cache = KvCache::with_storage(window.unwrap_or(total), kv_heads, hd, f16).unwrap();
            cache.append(0, &keys[..start].concat(), &vals[..start].concat());
            let mut out = vec![f32::NAN; rows * qw];
            attention(
                &qs[start..].concat(),
                &keys[start..].concat(),
                &vals[start..].concat(),
                &cache,
                start,
                s,
                &mut out,
            );
            for (r, p) in (start..total).enumerate() {
                let want = reference(&qs[p], &keys, &vals, p, s);
                for (i, (a, b)) in out[r * qw..(r + 1) * qw].iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-5, "{heads}/{kv_heads}x{hd}, {rows} rows from {start}, window {window:?}: position {p} [{i}] {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn softmax_is_taken_from_the_largest_score_however_far_apart_the_scores_are() {
        // Scores 200, 199 and 150 among scores in [-1, 1): e^(score - m) is only representable in f32 (and the
        // exponent only unclamped) if m is the true maximum; taken from any other score, the three largest
        // would all overflow to the clamp and weigh the same. The large ones sit at positions 0..3 and at
        // 64..67 (the start of a block of eight, and inside the vector body), and one row has them at its
        // end, among 200, 131 and 77 keys, so every part of the scan for the maximum sees them in turn.
        let mut rnd = uniform(3);
        for (total, at) in [(200, 0), (200, 64), (131, 128), (77, 3), (200, 196)] {
            let s = AttnShape { heads: 2, kv_heads: 1, head_dim: 8, window: None, scale: 1.0 };
            let big = [200.0, 199.0, 150.0];
            // q = e_0 for head 0 and 0.5 e_0 for head 1: the score of key j is k_j[0] (or half of it).
            let mut q = vec![0.0; 16];
            (q[0], q[8]) = (1.0, 0.5);
            let keys: Vec<Vec<f32>> = (0..total)
                .map(|j| {
                    let mut k: Vec<f32> = (0..8).map(|_| rnd()).collect();
                    if (at..at + 3).contains(&j) {
                        k[0] = big[j - at];
                    }
                    k
                })
                .collect();
            let vals: Vec<Vec<f32>> = (0..total).map(|_| (0..8).map(|_| rnd()).collect()).collect();
            let start = total - 1;
            let mut cache = KvCache::new(total, 1, 8);
            cache.append(0, &keys[..start].concat(), &vals[..start].concat());
            let mut out = vec![f32::NAN; 16];
            attention(&q, &keys[start], &vals[start], &cache, start, s, &mut out);
            let want = reference(&q, &keys, &vals, start, s);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "{total} keys, large scores at {at}: [{i}] {a} vs {b}");
            }
        }
    }

    #[test]
    fn split_rows_merge_parts_whose_scores_are_far_from_zero() {
        // One decode row over 1500 keys in 2 parts (4 query heads of 16 on one kv head), with every score
        // near +50 or near -60: each part's sums are rescaled by e^(m_part - m) before the merge, which is at
        // most 1; any rescaling that does not cancel m would overflow (e^100) or underflow (e^-120) in f32.
        let mut rnd = uniform(5);
        let s = AttnShape { heads: 4, kv_heads: 1, head_dim: 16, window: None, scale: 1.0 };
        let total = 1500;
        assert_eq!(key_parts(1, total, 4, 16), 2);
        for offset in [50.0, -60.0] {
            // q = e_0 in every head, so the score of key j is k_j[0] = offset + a value in [-1, 1).
            let q: Vec<f32> = (0..64).map(|i| if i % 16 == 0 { 1.0 } else { 0.0 }).collect();
            let keys: Vec<Vec<f32>> =
                (0..total).map(|_| (0..16).map(|i| rnd() + if i == 0 { offset } else { 0.0 }).collect()).collect();
            let vals: Vec<Vec<f32>> = (0..total).map(|_| (0..16).map(|_| rnd()).collect()).collect();
            let start = total - 1;
            let mut cache = KvCache::new(total, 1, 16);
            cache.append(0, &keys[..start].concat(), &vals[..start].concat());
            let mut out = vec![f32::NAN; 64];
            attention(&q, &keys[start], &vals[start], &cache, start, s, &mut out);
            let want = reference(&q, &keys, &vals, start, s);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "scores near {offset}: [{i}] {a} vs {b}");
            }
        }
    }

    #[test]
    fn key_parts_depend_on_the_shape_only() {
        // 4 query heads of 32 per kv head: 256 multiply-adds a key, so parts of at least 256 keys.
        assert_eq!((key_parts(1, 511, 4, 32), key_parts(1, 512, 4, 32), key_parts(1, 1040, 4, 32)), (1, 2, 4));
        assert_eq!(key_parts(1, 1 << 20, 4, 32), SPLIT_TASKS);
        // Heads of 256 (Gemma 3 1B): parts of 32 keys; 8 kv heads of 4 x 128: 4 parts each, 32 tasks in all.
        assert_eq!((key_parts(1, 63, 4, 256), key_parts(1, 64, 4, 256), key_parts(1, 4096, 4, 256)), (1, 2, 32));
        assert_eq!(key_parts(8, 4096, 4, 128), 4);
        // Enough tasks already: no split.
        assert_eq!((key_parts(SPLIT_TASKS, 4096, 4, 128), key_parts(500, 1 << 20, 1, 64)), (1, 1));
    }
}
