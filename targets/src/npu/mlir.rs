//! Core bodies in upstream MLIR (`func`, `arith`, `scf`, `memref`, `vector`, `math`), so that a design needs no
//! external kernel object: each [`CoreBody`] step becomes one `func.func` over flat memrefs of the buffers it
//! acquires, computing exactly what the emulator computes — the same loops, the same order of f32 sums, bf16
//! operands widened to f32. The matrix bodies are written on vectors: the GEMM's 4 x 8 x 4 block products as
//! `vector.contract`s (what mlir-aie lowers to the AIE2 mmul), the GEMVs' rows in chunks of 32 lanes, attention's
//! scores and PV over a head's dimensions in vectors of up to 16; the softmax and the row-wise bodies are scalar
//! loops. The functions verify as standalone MLIR (LLVM 19's), and the tests lower them to LLVM and run them on
//! the CPU against the emulator's arithmetic.
//!
//! The aie / aiex structure around them (tiles, objectfifos, links, cores, the runtime sequence) is [`super::aie`].

use super::design::{q8, CoreBody, RowOp, RowPieces};
use std::fmt::Write;

/// The passes that lower a core body to the LLVM dialect for a run on the CPU, in order: the one list both the
/// in-process JIT ([`super::melior::jit_text`], as a pipeline) and the `mlir-opt` tests (as flags) run.
pub const LLVM_LOWERING: [&str; 8] = [
    "convert-scf-to-cf",
    "convert-vector-to-llvm",
    "convert-math-to-llvm",
    "convert-arith-to-llvm",
    "finalize-memref-to-llvm",
    "convert-func-to-llvm",
    "convert-cf-to-llvm",
    "reconcile-unrealized-casts",
];

/// The MLIR name of a row-wise op.
fn row_op_name(op: RowOp) -> &'static str {
    match op {
        RowOp::RmsNorm { .. } => "rms_norm",
        RowOp::SiluGlu => "silu_glu",
        RowOp::Rope { .. } => "rope",
        RowOp::Softmax { .. } => "softmax",
    }
}

/// The name of a body's function: the op and its shape (`matmul_64x32x64`, `rms_norm_4x2048`; for rows in
/// pieces the prefix of its two functions, `rms_norm_8192_in_512`).
pub fn body_name(body: CoreBody) -> String {
    match body {
        CoreBody::MatMul { m, k, n, bt, .. } => format!("matmul_{m}x{k}x{n}{}", if bt { "_bt" } else { "" }),
        CoreBody::MatVec { rows, k, .. } => format!("matvec_{rows}x{k}"),
        CoreBody::MatVecQ8 { rows, k, .. } => format!("matvec_q8_{rows}x{k}"),
        CoreBody::Rows { op, rows, width } => format!("{}_{rows}x{width}", row_op_name(op)),
        CoreBody::RowPieces(RowPieces { op, width, piece }) => format!("{}_{width}_in_{piece}", row_op_name(op)),
        CoreBody::Attention { q_rows, keys, head_dim, rounds, .. } => {
            let w = if rounds.window > 0 { format!("_w{}", rounds.window) } else { String::new() };
            format!("attention_{q_rows}x{keys}x{head_dim}{w}")
        }
    }
}

/// Element counts and element types of a body's three buffers: its two operands and its result.
pub fn body_buffers(body: CoreBody) -> Option<[(u64, &'static str); 3]> {
    Some(match body {
        CoreBody::MatMul { m, k, n, .. } => [(m * k, "bf16"), (k * n, "bf16"), (m * n, "f32")],
        CoreBody::MatVec { rows, k, .. } => [(rows * k, "bf16"), (k, "bf16"), (rows, "f32")],
        CoreBody::MatVecQ8 { rows, k, .. } => [(rows * q8::row_bytes(k), "i8"), (k, "bf16"), (rows, "f32")],
        CoreBody::Rows { op, rows, width } => {
            let (n, elem) = op.second(rows, width);
            let elem = if elem == super::design::Elem::F32 { "f32" } else { "bf16" };
            [(rows * width, "bf16"), (n, elem), (rows * width, "f32")]
        }
        CoreBody::Attention { .. } | CoreBody::RowPieces(_) => return None,
    })
}

/// A float constant by its bits (`arith.constant 0x3F800000 : f32`), so that no decimal rounds differently.
fn f32_const(out: &mut String, name: &str, v: f32) {
    let _ = writeln!(out, "    %{name} = arith.constant 0x{:08X} : f32", v.to_bits());
}

/// The `func.func` of one step of `body`: arguments `%a`, `%b` (the operands) and `%c` (the result,
/// accumulated into where the body accumulates), flat memrefs. For attention and rows in pieces, two
/// functions (see [`attention_body`] and [`row_pieces_body`]).
pub fn core_body(body: CoreBody) -> Option<String> {
    if let CoreBody::Attention { q_rows, keys, head_dim, rounds, .. } = body {
        return Some(attention_body(&body_name(body), q_rows, keys, head_dim, rounds.window, rounds.scale));
    }
    if let CoreBody::RowPieces(rp) = body {
        return Some(row_pieces_body(&body_name(body), rp));
    }
    let [(na, ta), (nb, tb), (nc, tc)] = body_buffers(body)?;
    let mut s = String::new();
    let name = body_name(body);
    let _ = writeln!(
        s,
        "func.func @{name}(%a: memref<{na}x{ta}>, %b: memref<{nb}x{tb}>, %c: memref<{nc}x{tc}>) {{\n\
         \x20   %i0 = arith.constant 0 : index\n\
         \x20   %i1 = arith.constant 1 : index"
    );
    let idx = |s: &mut String, name: &str, v: u64| {
        let _ = writeln!(s, "    %{name} = arith.constant {v} : index");
    };
    // Loads widened to f32 (`load(s, dst, buffer, index, type)`).
    let load = |s: &mut String, dst: &str, buf: &str, at: &str, n: u64, ty: &str| {
        if ty == "bf16" {
            let name = dst.trim_start();
            let _ = writeln!(
                s,
                "{dst}_h = memref.load %{buf}[{at}] : memref<{n}xbf16>\n{dst} = arith.extf {name}_h : bf16 to f32"
            );
        } else {
            let _ = writeln!(s, "{dst} = memref.load %{buf}[{at}] : memref<{n}xf32>");
        }
    };
    match body {
        CoreBody::MatMul { m, k, n, bt, .. } => matmul_body(&mut s, (m, k, n, bt), (na, nb, nc)),
        CoreBody::MatVec { rows, k, .. } => {
            // y[r] += W[r] x in chunks of 32 in order: each chunk's products folded into y in order
            // (`vector.reduction` from y's running sum).
            assert!(k.is_multiple_of(GEMV_LANES), "a bf16 GEMV buffer's k is whole chunks of {GEMV_LANES}: {k}");
            idx(&mut s, "rows", rows);
            idx(&mut s, "k", k);
            idx(&mut s, "chunks", k / GEMV_LANES);
            idx(&mut s, "lanes", GEMV_LANES);
            let v = format!("vector<{GEMV_LANES}x");
            matvec_rows(&mut s, nc, ("k", "kc", "chunks"), &|s| {
                let _ = write!(
                    s,
                    "        %xo = arith.muli %kc, %lanes : index\n\
                     \x20       %wi = arith.addi %row, %xo : index\n\
                     \x20       %wh = vector.load %a[%wi] : memref<{na}xbf16>, {v}bf16>\n\
                     \x20       %xh = vector.load %b[%xo] : memref<{nb}xbf16>, {v}bf16>\n\
                     \x20       %w = arith.extf %wh : {v}bf16> to {v}f32>\n\
                     \x20       %x = arith.extf %xh : {v}bf16> to {v}f32>\n\
                     \x20       %p = arith.mulf %w, %x : {v}f32>\n\
                     \x20       %next = vector.reduction <add>, %p, %acc : {v}f32> into f32\n"
                );
            });
        }
        CoreBody::MatVecQ8 { rows, k, .. } => {
            // Per row, per block in order: the block's scale d from its two bytes (bf16, little-endian), p = the
            // sum over its 32 quants of q x in order from 0 (a `vector.reduction` of the block's products from
            // 0), then y = y + d p.
            idx(&mut s, "rows", rows);
            idx(&mut s, "blocks", k / q8::BLOCK);
            idx(&mut s, "rb", q8::row_bytes(k));
            idx(&mut s, "bb", q8::BLOCK_BYTES);
            idx(&mut s, "bk", q8::BLOCK);
            idx(&mut s, "i2", 2);
            f32_const(&mut s, "zero", 0.0);
            s.push_str("    %sh = arith.constant 8 : i16\n");
            // Byte `v` of the block at `at`, and its bits as an i16.
            let byte = |s: &mut String, v: &str, at: &str| {
                let _ = writeln!(
                    s,
                    "        %{v} = memref.load %a[{at}] : memref<{na}xi8>\n        %{v}16 = arith.extui %{v} : i8 to i16"
                );
            };
            matvec_rows(&mut s, nc, ("rb", "blk", "blocks"), &|s| {
                s.push_str(
                    "        %bo0 = arith.muli %blk, %bb : index\n\
                     \x20       %bo = arith.addi %row, %bo0 : index\n\
                     \x20       %bo1 = arith.addi %bo, %i1 : index\n",
                );
                byte(s, "lo", "%bo");
                byte(s, "hi", "%bo1");
                let _ = writeln!(
                    s,
                    "        %hs = arith.shli %hi16, %sh : i16\n\
                     \x20       %bits = arith.ori %hs, %lo16 : i16\n\
                     \x20       %d_h = arith.bitcast %bits : i16 to bf16\n\
                     \x20       %d = arith.extf %d_h : bf16 to f32\n\
                     \x20       %q0 = arith.addi %bo, %i2 : index\n\
                     \x20       %x0 = arith.muli %blk, %bk : index\n\
                     \x20       %qv = vector.load %a[%q0] : memref<{na}xi8>, vector<32xi8>\n\
                     \x20       %qf = arith.sitofp %qv : vector<32xi8> to vector<32xf32>\n\
                     \x20       %xh = vector.load %b[%x0] : memref<{nb}xbf16>, vector<32xbf16>\n\
                     \x20       %x = arith.extf %xh : vector<32xbf16> to vector<32xf32>\n\
                     \x20       %pv = arith.mulf %qf, %x : vector<32xf32>\n\
                     \x20       %dot = vector.reduction <add>, %pv, %zero : vector<32xf32> into f32"
                );
                const _: () = assert!(q8::BLOCK == 32, "the vectors of a q8 block");
                s.push_str(
                    "        %scaled = arith.mulf %d, %dot : f32\n\
                     \x20       %next = arith.addf %acc, %scaled : f32\n",
                );
            });
        }
        CoreBody::Rows { op, rows, width } => {
            idx(&mut s, "rows", rows);
            idx(&mut s, "w", width);
            f32_const(&mut s, "zero", 0.0);
            f32_const(&mut s, "one", 1.0);
            let _ = writeln!(s, "    scf.for %r = %i0 to %rows step %i1 {{\n      %row = arith.muli %r, %w : index");
            rows_body(&mut s, op, width, (na, nb, nc, tb), &load);
            s.push_str("    }\n");
        }
        CoreBody::Attention { .. } | CoreBody::RowPieces(_) => unreachable!("refused above"),
    }
    s.push_str("    return\n}\n");
    Some(s)
}

/// Lanes of the bf16 GEMV body's vectors: 32 bf16, one 512-bit AIE2 vector register.
const GEMV_LANES: u64 = 32;

/// The GEMM body, `C += A B` over the mmul's blocks: A in 4 x 8 blocks and B in 8 x 4 blocks (with `bt`, B
/// transposed in 4 x 8 blocks like A), each block row-major, blocks row after row; C (`m x n` f32) row-major.
/// C is taken in groups of up to 2 x 2 of its 4 x 4 blocks (two where the blocks along a side are even in
/// number, else one), each block kept as a `vector<4x4xf32>` across the blocks of `k`: per block of `k`, the
/// group's blocks of A and of B are loaded once each (32 bf16 as one vector), widened, B's transposed where it
/// comes transposed, and every pair folded into its accumulator by a `vector.contract` — the form mlir-aie's
/// `convert-vector-to-aievec` (aie2) maps onto the bf16 mmul (`aievec.matmul` of 4x8 by 8x4 into 4x4 f32, and
/// `aievec.shuffle` for the transpose), with four mmuls for four block loads where one block alone would take
/// eight. Each output's eight products of a block are summed from 0 in order and then added to it (what LLVM's
/// lowering of the contraction computes, and the emulator's order), whatever the grouping.
fn matmul_body(s: &mut String, (m, k, n, bt): (u64, u64, u64, bool), (na, nb, nc): (u64, u64, u64)) {
    assert!(
        m.is_multiple_of(4) && k.is_multiple_of(8) && n.is_multiple_of(4),
        "a GEMM body is whole 4 x 8 x 4 blocks: {m} x {k} x {n}"
    );
    let (mq, nq) = (m / 4, n / 4);
    // The group: `gr` blocks of rows by `gc` blocks of columns.
    let (gr, gc) = (if mq.is_multiple_of(2) { 2 } else { 1 }, if nq.is_multiple_of(2) { 2 } else { 1 });
    for (v, x) in [("mq", mq), ("nq", nq), ("kb", k / 8), ("n", n), ("gr", gr), ("gc", gc), ("i4", 4), ("i32", 32)] {
        let _ = writeln!(s, "    %{v} = arith.constant {x} : index");
    }
    for i in 2..4 {
        let _ = writeln!(s, "    %i{i} = arith.constant {i} : index");
    }
    let (f4x4, f4, c) = ("vector<4x4xf32>", "vector<4xf32>", format!("memref<{nc}xf32>"));
    let blocks: Vec<(u64, u64)> = (0..gr).flat_map(|a| (0..gc).map(move |b| (a, b))).collect();
    let _ = write!(
        s,
        "    scf.for %rq = %i0 to %mq step %gr {{\n\
         \x20     scf.for %cq = %i0 to %nq step %gc {{\n\
         \x20       %zero = arith.constant dense<0.0> : {f4x4}\n"
    );
    // Each block of the group's C, as four rows of four: block (a, b) is `%acc{a}{b}_4`.
    for &(a, b) in &blocks {
        let _ = write!(
            s,
            "        %rb{a}{b} = arith.addi %rq, %i{a} : index\n\
             \x20       %r{a}{b} = arith.muli %rb{a}{b}, %i4 : index\n\
             \x20       %cb{a}{b} = arith.addi %cq, %i{b} : index\n\
             \x20       %col{a}{b} = arith.muli %cb{a}{b}, %i4 : index\n"
        );
        for i in 0..4 {
            let prev = if i == 0 { "%zero".to_string() } else { format!("%acc{a}{b}_{i}") };
            let _ = write!(
                s,
                "        %cr{a}{b}{i} = arith.addi %r{a}{b}, %i{i} : index\n\
                 \x20       %co{a}{b}{i}_ = arith.muli %cr{a}{b}{i}, %n : index\n\
                 \x20       %co{a}{b}{i} = arith.addi %co{a}{b}{i}_, %col{a}{b} : index\n\
                 \x20       %crow{a}{b}{i} = vector.load %c[%co{a}{b}{i}] : {c}, {f4}\n\
                 \x20       %acc{a}{b}_{} = vector.insert %crow{a}{b}{i}, {prev} [{i}] : {f4} into {f4x4}\n",
                i + 1
            );
        }
    }
    let iters: Vec<String> = blocks.iter().map(|(a, b)| format!("%s{a}{b} = %acc{a}{b}_4")).collect();
    let types = vec![f4x4; blocks.len()].join(", ");
    let sums: Vec<String> = blocks.iter().map(|(a, b)| format!("%sum{a}{b}")).collect();
    let _ = writeln!(
        s,
        "        {} = scf.for %kq = %i0 to %kb step %i1 iter_args({}) -> ({types}) {{",
        if blocks.len() == 1 { sums[0].clone() } else { format!("%sum:{}", blocks.len()) },
        iters.join(", ")
    );
    // A's blocks (row block rq + a, kq) and B's (kq, column block cq + b), or transposed (cq + b, kq).
    for a in 0..gr {
        let _ = write!(
            s,
            "          %ab{a}_ = arith.muli %rb{a}0, %kb : index\n\
             \x20         %ab{a} = arith.addi %ab{a}_, %kq : index\n\
             \x20         %ao{a} = arith.muli %ab{a}, %i32 : index\n\
             \x20         %av{a} = vector.load %a[%ao{a}] : memref<{na}xbf16>, vector<32xbf16>\n\
             \x20         %am{a} = vector.shape_cast %av{a} : vector<32xbf16> to vector<4x8xbf16>\n\
             \x20         %af{a} = arith.extf %am{a} : vector<4x8xbf16> to vector<4x8xf32>\n"
        );
    }
    for b in 0..gc {
        let (outer, inner, per) = if bt { (format!("%cb0{b}"), "%kq", "%kb") } else { ("%kq".to_string(), "", "%nq") };
        let inner = if bt { inner.to_string() } else { format!("%cb0{b}") };
        let _ = write!(
            s,
            "          %bb{b}_ = arith.muli {outer}, {per} : index\n\
             \x20         %bb{b} = arith.addi %bb{b}_, {inner} : index\n\
             \x20         %bo{b} = arith.muli %bb{b}, %i32 : index\n\
             \x20         %bv{b} = vector.load %b[%bo{b}] : memref<{nb}xbf16>, vector<32xbf16>\n"
        );
        if bt {
            let _ = write!(
                s,
                "          %bt{b} = vector.shape_cast %bv{b} : vector<32xbf16> to vector<4x8xbf16>\n\
                 \x20         %bm{b} = vector.transpose %bt{b}, [1, 0] : vector<4x8xbf16> to vector<8x4xbf16>\n"
            );
        } else {
            let _ = writeln!(s, "          %bm{b} = vector.shape_cast %bv{b} : vector<32xbf16> to vector<8x4xbf16>");
        }
        let _ = writeln!(s, "          %bf{b} = arith.extf %bm{b} : vector<8x4xbf16> to vector<8x4xf32>");
    }
    for &(a, b) in &blocks {
        let _ = writeln!(
            s,
            "          %next{a}{b} = vector.contract {{indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d2)>, \
             affine_map<(d0, d1, d2) -> (d2, d1)>, affine_map<(d0, d1, d2) -> (d0, d1)>], \
             iterator_types = [\"parallel\", \"parallel\", \"reduction\"], kind = #vector.kind<add>}} \
             %af{a}, %bf{b}, %s{a}{b} : vector<4x8xf32>, vector<8x4xf32> into {f4x4}"
        );
    }
    let nexts: Vec<String> = blocks.iter().map(|(a, b)| format!("%next{a}{b}")).collect();
    let _ = writeln!(s, "          scf.yield {} : {types}\n        }}", nexts.join(", "));
    for (g, &(a, b)) in blocks.iter().enumerate() {
        let sum = if blocks.len() == 1 { sums[0].clone() } else { format!("%sum#{g}") };
        for i in 0..4 {
            let _ = write!(
                s,
                "        %srow{a}{b}{i} = vector.extract {sum}[{i}] : {f4} from {f4x4}\n\
                 \x20       vector.store %srow{a}{b}{i}, %c[%co{a}{b}{i}] : {c}, {f4}\n"
            );
        }
    }
    s.push_str("      }\n    }\n");
}

/// An attention core's two functions: `@NAME_tile(%q, %kv, %m, %l, %o, %rtp, %key0, %row0)` folds one K/V
/// tile (`keys` keys of K then of V) into the block's online softmax — each row's running maximum `%m`, sum
/// `%l` and output `%o` — for the keys at `%key0..` and the block's rows at positions `q0 + %row0 ..`, where
/// `q0` and `kv_len` are the dispatch's runtime parameters, words 0 and 1 of `%rtp` (the core's parameter
/// buffer, i32): a row at `p` sees keys `first ..= p` (the causal mask, and the window's start where there
/// is a window), and none if `p >= kv_len` (padding); a row that sees none of the tile is left as it was; the
/// probabilities rounded to bf16 for PV. A tile no row of the block sees (its first key past the block's last
/// real row, or its last before the first row's window: `key0 + keys + window <= pos0 + 1`) is not read at
/// all, as the emulator's `AttentionTile::computes` says. `@NAME_finish(%o, %l, %out)` writes `o / l` per row (zeros for a row that
/// saw no key).
fn attention_body(name: &str, q_rows: u64, keys: u64, hd: u64, window: u64, scale: f32) -> String {
    let (nq, nkv, no) = (q_rows * hd, 2 * keys * hd, q_rows * hd);
    // A head's dimensions in vectors of `lanes`: the largest power of two that divides it, at most 16 (one
    // 512-bit register of f32).
    let lanes = 1u64 << hd.trailing_zeros().min(4);
    let (vb, vf) = (format!("vector<{lanes}xbf16>"), format!("vector<{lanes}xf32>"));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "func.func @{name}_tile(%q: memref<{nq}xbf16>, %kv: memref<{nkv}xbf16>, %m: memref<{q_rows}xf32>, \
         %l: memref<{q_rows}xf32>, %o: memref<{no}xf32>, %rtp: memref<2xi32>, %key0: index, %row0: index) {{\n\
         \x20   %i0 = arith.constant 0 : index\n\
         \x20   %i1 = arith.constant 1 : index\n\
         \x20   %qn = arith.constant {q_rows} : index\n\
         \x20   %kn = arith.constant {keys} : index\n\
         \x20   %hd = arith.constant {hd} : index\n\
         \x20   %lanes = arith.constant {lanes} : index\n\
         \x20   %hdc = arith.constant {} : index\n\
         \x20   %vals = arith.constant {} : index\n\
         \x20   %win = arith.constant {window} : index\n\
         \x20   %zero = arith.constant 0x00000000 : f32\n\
         \x20   %zerov = arith.constant dense<0.0> : {vf}\n\
         \x20   %ninf = arith.constant 0xFF800000 : f32\n\
         \x20   %scale = arith.constant 0x{:08X} : f32\n\
         \x20   %s = memref.alloca() : memref<{keys}xf32>\n\
         \x20   %q0w = memref.load %rtp[%i0] : memref<2xi32>\n\
         \x20   %kvw = memref.load %rtp[%i1] : memref<2xi32>\n\
         \x20   %q0 = arith.index_castui %q0w : i32 to index\n\
         \x20   %kvlen = arith.index_castui %kvw : i32 to index\n\
         \x20   %pos0 = arith.addi %q0, %row0 : index\n\
         \x20   %windowed = arith.cmpi ugt, %win, %i0 : index\n\
         \x20   %qn1 = arith.subi %qn, %i1 : index\n\
         \x20   %plast = arith.addi %pos0, %qn1 : index\n\
         \x20   %kvlast = arith.subi %kvlen, %i1 : index\n\
         \x20   %last = arith.minui %plast, %kvlast : index\n\
         \x20   %pos01 = arith.addi %pos0, %i1 : index\n\
         \x20   %kend = arith.addi %key0, %kn : index\n\
         \x20   %kendw = arith.addi %kend, %win : index\n\
         \x20   %inwin = arith.cmpi ugt, %kendw, %pos01 : index\n\
         \x20   %nowin = arith.cmpi eq, %win, %i0 : index\n\
         \x20   %late = arith.ori %nowin, %inwin : i1\n\
         \x20   %real0 = arith.cmpi ult, %pos0, %kvlen : index\n\
         \x20   %early = arith.cmpi ule, %key0, %last : index\n\
         \x20   %some = arith.andi %real0, %early : i1\n\
         \x20   %computes = arith.andi %some, %late : i1\n\
         \x20   scf.if %computes {{\n\
         \x20     scf.for %r = %i0 to %qn step %i1 {{\n\
         \x20       %p = arith.addi %pos0, %r : index\n\
         \x20       %real = arith.cmpi ult, %p, %kvlen : index\n\
         \x20       %p1 = arith.addi %p, %i1 : index\n\
         \x20       %past = arith.cmpi ugt, %p1, %win : index\n\
         \x20       %back = arith.subi %p1, %win : index\n\
         \x20       %from = arith.select %past, %back, %i0 : index\n\
         \x20       %first = arith.select %windowed, %from, %i0 : index\n\
         \x20       %qrow = arith.muli %r, %hd : index\n\
         \x20       %m0 = memref.load %m[%r] : memref<{q_rows}xf32>\n\
         \x20       %mx = scf.for %j = %i0 to %kn step %i1 iter_args(%best = %m0) -> (f32) {{\n\
         \x20         %key = arith.addi %key0, %j : index\n\
         \x20         %seen0 = arith.cmpi uge, %key, %first : index\n\
         \x20         %seen1 = arith.cmpi ule, %key, %p : index\n\
         \x20         %seen2 = arith.andi %seen0, %seen1 : i1\n\
         \x20         %seen = arith.andi %seen2, %real : i1\n\
         \x20         %krow = arith.muli %j, %hd : index\n\
         \x20         %dot = scf.for %dc = %i0 to %hdc step %i1 iter_args(%acc = %zero) -> (f32) {{\n\
         \x20           %d = arith.muli %dc, %lanes : index\n\
         \x20           %qi = arith.addi %qrow, %d : index\n\
         \x20           %ki = arith.addi %krow, %d : index\n\
         \x20           %qh = vector.load %q[%qi] : memref<{nq}xbf16>, {vb}\n\
         \x20           %kh = vector.load %kv[%ki] : memref<{nkv}xbf16>, {vb}\n\
         \x20           %qf = arith.extf %qh : {vb} to {vf}\n\
         \x20           %kf = arith.extf %kh : {vb} to {vf}\n\
         \x20           %prod = arith.mulf %qf, %kf : {vf}\n\
         \x20           %next = vector.reduction <add>, %prod, %acc : {vf} into f32\n\
         \x20           scf.yield %next : f32\n\
         \x20         }}\n\
         \x20         %scaled = arith.mulf %dot, %scale : f32\n\
         \x20         %sc = arith.select %seen, %scaled, %ninf : f32\n\
         \x20         memref.store %sc, %s[%j] : memref<{keys}xf32>\n\
         \x20         %nb = arith.maximumf %best, %sc : f32\n\
         \x20         scf.yield %nb : f32\n\
         \x20       }}\n\
         \x20       %live = arith.cmpf one, %mx, %ninf : f32\n\
         \x20       scf.if %live {{\n\
         \x20         %dm = arith.subf %m0, %mx : f32\n\
         \x20         %corr = math.exp %dm : f32\n\
         \x20         %psum = scf.for %j = %i0 to %kn step %i1 iter_args(%acc = %zero) -> (f32) {{\n\
         \x20           %sv = memref.load %s[%j] : memref<{keys}xf32>\n\
         \x20           %ds = arith.subf %sv, %mx : f32\n\
         \x20           %e = math.exp %ds : f32\n\
         \x20           memref.store %e, %s[%j] : memref<{keys}xf32>\n\
         \x20           %next = arith.addf %acc, %e : f32\n\
         \x20           scf.yield %next : f32\n\
         \x20         }}\n\
         \x20         %l0 = memref.load %l[%r] : memref<{q_rows}xf32>\n\
         \x20         %lc = arith.mulf %l0, %corr : f32\n\
         \x20         %ln = arith.addf %lc, %psum : f32\n\
         \x20         memref.store %ln, %l[%r] : memref<{q_rows}xf32>\n\
         \x20         %corrv = vector.broadcast %corr : f32 to {vf}\n\
         \x20         scf.for %dc = %i0 to %hdc step %i1 {{\n\
         \x20           %d = arith.muli %dc, %lanes : index\n\
         \x20           %pv = scf.for %j = %i0 to %kn step %i1 iter_args(%acc = %zerov) -> ({vf}) {{\n\
         \x20             %e = memref.load %s[%j] : memref<{keys}xf32>\n\
         \x20             %eh = arith.truncf %e : f32 to bf16\n\
         \x20             %eb = arith.extf %eh : bf16 to f32\n\
         \x20             %ev = vector.broadcast %eb : f32 to {vf}\n\
         \x20             %vrow = arith.muli %j, %hd : index\n\
         \x20             %vat0 = arith.addi %vals, %vrow : index\n\
         \x20             %vat = arith.addi %vat0, %d : index\n\
         \x20             %vh = vector.load %kv[%vat] : memref<{nkv}xbf16>, {vb}\n\
         \x20             %vf = arith.extf %vh : {vb} to {vf}\n\
         \x20             %prod = arith.mulf %ev, %vf : {vf}\n\
         \x20             %next = arith.addf %acc, %prod : {vf}\n\
         \x20             scf.yield %next : {vf}\n\
         \x20           }}\n\
         \x20           %oi = arith.addi %qrow, %d : index\n\
         \x20           %o0 = vector.load %o[%oi] : memref<{no}xf32>, {vf}\n\
         \x20           %oc = arith.mulf %o0, %corrv : {vf}\n\
         \x20           %on = arith.addf %oc, %pv : {vf}\n\
         \x20           vector.store %on, %o[%oi] : memref<{no}xf32>, {vf}\n\
         \x20         }}\n\
         \x20         memref.store %mx, %m[%r] : memref<{q_rows}xf32>\n\
         \x20       }}\n\
         \x20     }}\n\
         \x20   }}\n\
         \x20   return\n\
         }}\n\
         func.func @{name}_finish(%o: memref<{no}xf32>, %l: memref<{q_rows}xf32>, %out: memref<{no}xf32>) {{\n\
         \x20   %i0 = arith.constant 0 : index\n\
         \x20   %i1 = arith.constant 1 : index\n\
         \x20   %n = arith.constant {no} : index\n\
         \x20   %hd = arith.constant {hd} : index\n\
         \x20   %zero = arith.constant 0x00000000 : f32\n\
         \x20   scf.for %e = %i0 to %n step %i1 {{\n\
         \x20     %r = arith.divui %e, %hd : index\n\
         \x20     %lr = memref.load %l[%r] : memref<{q_rows}xf32>\n\
         \x20     %ov = memref.load %o[%e] : memref<{no}xf32>\n\
         \x20     %q = arith.divf %ov, %lr : f32\n\
         \x20     %pos = arith.cmpf ogt, %lr, %zero : f32\n\
         \x20     %y = arith.select %pos, %q, %zero : f32\n\
         \x20     memref.store %y, %out[%e] : memref<{no}xf32>\n\
         \x20   }}\n\
         \x20   return\n\
         }}",
        hd / lanes,
        keys * hd,
        scale.to_bits()
    );
    s
}

/// The two functions of a core of rows in pieces ([`RowPieces`], computing what its `stats` and `out` compute,
/// in the same order): `@NAME_stats(%a, [%b,] %s, %j)` folds piece `%j` of the row (`%a`, bf16; the softmax's
/// mask `%b` too) into the row's statistics `%s` (two f32, started afresh at piece 0), and `@NAME_out(%a, %b,
/// %s, %c, %j)` writes piece `%j`'s output `%c` (f32) from the row's piece, the second operand's and the
/// statistics. Both work on the first `width - j piece` elements of a piece only; `out` writes zeros to the
/// rest.
fn row_pieces_body(name: &str, rp: RowPieces) -> String {
    let RowPieces { op, width, piece: p } = rp;
    let (tx, ts) = (format!("memref<{p}xbf16>"), "memref<2xf32>");
    let softmax = matches!(op, RowOp::Softmax { .. });
    let mut s = String::new();
    // The constants, and `%n`: the piece's elements within the row.
    let prologue = |s: &mut String| {
        let _ = writeln!(
            s,
            "    %i0 = arith.constant 0 : index\n\
             \x20   %i1 = arith.constant 1 : index\n\
             \x20   %p = arith.constant {p} : index\n\
             \x20   %w = arith.constant {width} : index\n\
             \x20   %zero = arith.constant 0x00000000 : f32\n\
             \x20   %skip = arith.muli %j, %p : index\n\
             \x20   %rest = arith.subi %w, %skip : index\n\
             \x20   %short = arith.cmpi ult, %rest, %p : index\n\
             \x20   %n = arith.select %short, %rest, %p : index"
        );
    };
    // `%v` (and for the softmax `%z = %v scale + %mk`) of element `%i`, at `indent`.
    let element = |s: &mut String, indent: &str| {
        let _ = writeln!(s, "{indent}%h = memref.load %a[%i] : {tx}\n{indent}%v = arith.extf %h : bf16 to f32");
        if softmax {
            let _ = writeln!(
                s,
                "{indent}%mh = memref.load %b[%i] : {tx}\n\
                 {indent}%mk = arith.extf %mh : bf16 to f32\n\
                 {indent}%vs = arith.mulf %v, %scale : f32\n\
                 {indent}%z = arith.addf %vs, %mk : f32"
            );
        }
    };
    // The op's constants (RMSNorm's for its second pass only).
    let constants = |s: &mut String, pass: u32| match op {
        RowOp::Softmax { scale } => {
            f32_const(s, "ninf", f32::NEG_INFINITY);
            f32_const(s, "scale", scale);
        }
        RowOp::RmsNorm { .. } if pass == 1 => {}
        RowOp::RmsNorm { eps } => {
            f32_const(s, "one", 1.0);
            f32_const(s, "wf", width as f32);
            f32_const(s, "eps", eps);
        }
        RowOp::SiluGlu | RowOp::Rope { .. } => unreachable!("element-wise ops take whole rows"),
    };
    // Pass 1.
    let b = if softmax { format!("%b: {tx}, ") } else { String::new() };
    let _ = writeln!(s, "func.func @{name}_stats(%a: {tx}, {b}%s: {ts}, %j: index) {{");
    prologue(&mut s);
    constants(&mut s, 1);
    let _ = writeln!(s, "    %first = arith.cmpi eq, %j, %i0 : index\n    %s0 = memref.load %s[%i0] : {ts}");
    if softmax {
        let _ = writeln!(
            s,
            "    %s1 = memref.load %s[%i1] : {ts}\n\
             \x20   %m0 = arith.select %first, %ninf, %s0 : f32\n\
             \x20   %l0 = arith.select %first, %zero, %s1 : f32"
        );
        fold(&mut s, "    ", "mx", ("i", "n"), "%m0", |s| {
            element(s, "      ");
            s.push_str("      %next = arith.maximumf %acc, %z : f32\n");
        });
        s.push_str(
            "    %live = arith.cmpf one, %mx, %ninf : f32\n\
             \x20   %ml:2 = scf.if %live -> (f32, f32) {\n\
             \x20     %dm = arith.subf %m0, %mx : f32\n\
             \x20     %corr = math.exp %dm : f32\n",
        );
        fold(&mut s, "      ", "sum", ("i", "n"), "%zero", |s| {
            element(s, "        ");
            s.push_str(
                "        %d = arith.subf %z, %mx : f32\n\
                 \x20       %e = math.exp %d : f32\n\
                 \x20       %next = arith.addf %acc, %e : f32\n",
            );
        });
        let _ = writeln!(
            s,
            "      %lc = arith.mulf %l0, %corr : f32\n\
             \x20     %ln = arith.addf %lc, %sum : f32\n\
             \x20     scf.yield %mx, %ln : f32, f32\n\
             \x20   }} else {{\n\
             \x20     scf.yield %m0, %l0 : f32, f32\n\
             \x20   }}\n\
             \x20   memref.store %ml#0, %s[%i0] : {ts}\n\
             \x20   memref.store %ml#1, %s[%i1] : {ts}"
        );
    } else {
        s.push_str("    %from = arith.select %first, %zero, %s0 : f32\n");
        fold(&mut s, "    ", "ss", ("i", "n"), "%from", |s| {
            element(s, "      ");
            s.push_str("      %sq = arith.mulf %v, %v : f32\n      %next = arith.addf %acc, %sq : f32\n");
        });
        let _ = writeln!(s, "    memref.store %ss, %s[%i0] : {ts}");
    }
    s.push_str("    return\n}\n");
    // Pass 2.
    let _ = writeln!(s, "func.func @{name}_out(%a: {tx}, %b: {tx}, %s: {ts}, %c: memref<{p}xf32>, %j: index) {{");
    prologue(&mut s);
    constants(&mut s, 2);
    let _ = writeln!(s, "    %s0 = memref.load %s[%i0] : {ts}");
    if softmax {
        let _ = writeln!(s, "    %s1 = memref.load %s[%i1] : {ts}\n    %dead = arith.cmpf oeq, %s0, %ninf : f32");
    } else {
        s.push_str(
            "    %mean = arith.divf %s0, %wf : f32\n\
             \x20   %t = arith.addf %mean, %eps : f32\n\
             \x20   %rt = math.sqrt %t : f32\n\
             \x20   %inv = arith.divf %one, %rt : f32\n",
        );
    }
    s.push_str("    scf.for %i = %i0 to %n step %i1 {\n");
    element(&mut s, "      ");
    if softmax {
        s.push_str(
            "      %d = arith.subf %z, %s0 : f32\n\
             \x20     %e = math.exp %d : f32\n\
             \x20     %q = arith.divf %e, %s1 : f32\n\
             \x20     %y = arith.select %dead, %zero, %q : f32\n",
        );
    } else {
        let _ = writeln!(
            s,
            "      %gh = memref.load %b[%i] : {tx}\n\
             \x20     %g = arith.extf %gh : bf16 to f32\n\
             \x20     %vi = arith.mulf %v, %inv : f32\n\
             \x20     %y = arith.mulf %vi, %g : f32"
        );
    }
    let _ = writeln!(
        s,
        "      memref.store %y, %c[%i] : memref<{p}xf32>\n\
         \x20   }}\n\
         \x20   scf.for %i = %n to %p step %i1 {{\n\
         \x20     memref.store %zero, %c[%i] : memref<{p}xf32>\n\
         \x20   }}\n\
         \x20   return\n\
         }}"
    );
    s
}

type Load<'a> = dyn Fn(&mut String, &str, &str, &str, u64, &str) + 'a;

/// The row loop of the GEMV bodies: for each row `%r`, `y[r]` (`%c`, `nc` f32) folded from what it held over
/// `%var` from 0 to `%bound`, `%row` the row's first element of `%a` (`%stride` elements a row); `step` writes
/// one step of the fold, from `%acc` to `%next`.
fn matvec_rows(s: &mut String, nc: u64, (stride, var, bound): (&str, &str, &str), step: &dyn Fn(&mut String)) {
    let _ = writeln!(
        s,
        "    scf.for %r = %i0 to %rows step %i1 {{\n\
         \x20     %init = memref.load %c[%r] : memref<{nc}xf32>\n\
         \x20     %row = arith.muli %r, %{stride} : index"
    );
    fold(s, "      ", "sum", (var, bound), "%init", step);
    let _ = writeln!(s, "      memref.store %sum, %c[%r] : memref<{nc}xf32>\n    }}");
}

/// A loop at `indent` over `%var` from 0 to `%bound` that folds an f32 from `init` into `%result`: `step`
/// writes one step, at `indent` and two, from `%acc` to `%next`.
fn fold(
    s: &mut String,
    indent: &str,
    result: &str,
    (var, bound): (&str, &str),
    init: &str,
    step: impl FnOnce(&mut String),
) {
    let _ = writeln!(
        s,
        "{indent}%{result} = scf.for %{var} = %i0 to %{bound} step %i1 iter_args(%acc = {init}) -> (f32) {{"
    );
    step(s);
    let _ = writeln!(s, "{indent}  scf.yield %next : f32\n{indent}}}");
}

/// The per-row part of a row-wise body (inside the loop over rows `%r`, the row's first element `%row`).
fn rows_body(s: &mut String, op: RowOp, width: u64, (na, nb, nc, tb): (u64, u64, u64, &str), load: &Load<'_>) {
    let elem = |s: &mut String, dst: &str| {
        let _ = writeln!(s, "        %e = arith.addi %row, %j : index");
        load(s, dst, "a", "%e", na, "bf16");
    };
    let store = |s: &mut String, v: &str| {
        let _ = writeln!(s, "        memref.store {v}, %c[%e] : memref<{nc}xf32>");
    };
    match op {
        RowOp::RmsNorm { eps } => {
            // The row's sum of squares in order, then x / sqrt(ss / width + eps) * g.
            fold(s, "      ", "ss", ("j", "w"), "%zero", |s| {
                elem(s, "        %v");
                s.push_str("        %sq = arith.mulf %v, %v : f32\n        %next = arith.addf %acc, %sq : f32\n");
            });
            let _ = writeln!(
                s,
                "      %wf = arith.constant 0x{:08X} : f32\n      %eps = arith.constant 0x{:08X} : f32",
                (width as f32).to_bits(),
                eps.to_bits()
            );
            s.push_str(
                "      %mean = arith.divf %ss, %wf : f32\n\
                 \x20     %t = arith.addf %mean, %eps : f32\n\
                 \x20     %rt = math.sqrt %t : f32\n\
                 \x20     %inv = arith.divf %one, %rt : f32\n\
                 \x20     scf.for %j = %i0 to %w step %i1 {\n",
            );
            elem(s, "        %v");
            load(s, "        %g", "b", "%j", nb, "bf16");
            s.push_str("        %vi = arith.mulf %v, %inv : f32\n        %y = arith.mulf %vi, %g : f32\n");
            store(s, "%y");
            s.push_str("      }\n");
        }
        RowOp::SiluGlu => {
            // g / (1 + exp(-g)) * u, element by element.
            s.push_str("      scf.for %j = %i0 to %w step %i1 {\n");
            elem(s, "        %g");
            load(s, "        %u", "b", "%e", nb, tb);
            s.push_str(
                "        %ng = arith.negf %g : f32\n\
                 \x20       %ex = math.exp %ng : f32\n\
                 \x20       %den = arith.addf %one, %ex : f32\n\
                 \x20       %sg = arith.divf %g, %den : f32\n\
                 \x20       %y = arith.mulf %sg, %u : f32\n",
            );
            store(s, "%y");
            s.push_str("      }\n");
        }
        RowOp::Rope { head_dim } => {
            // Rotate-half per head: y[f] = a cos - b sin, y[f + half] = b cos + a sin, the row's cosines then
            // sines in its table row.
            let half = head_dim / 2;
            let _ = writeln!(
                s,
                "      %hd = arith.constant {head_dim} : index\n\
                 \x20     %half = arith.constant {half} : index\n\
                 \x20     %heads = arith.constant {} : index\n\
                 \x20     %trow = arith.muli %r, %hd : index\n\
                 \x20     scf.for %h = %i0 to %heads step %i1 {{\n\
                 \x20     %hb = arith.muli %h, %hd : index\n\
                 \x20     scf.for %f = %i0 to %half step %i1 {{\n\
                 \x20       %j = arith.addi %hb, %f : index\n\
                 \x20       %j2 = arith.addi %j, %half : index\n\
                 \x20       %e = arith.addi %row, %j : index\n\
                 \x20       %e2 = arith.addi %row, %j2 : index\n\
                 \x20       %ti = arith.addi %trow, %f : index\n\
                 \x20       %ti2 = arith.addi %ti, %half : index",
                width / head_dim
            );
            load(s, "        %xa", "a", "%e", na, "bf16");
            load(s, "        %xb", "a", "%e2", na, "bf16");
            load(s, "        %cs", "b", "%ti", nb, tb);
            load(s, "        %sn", "b", "%ti2", nb, tb);
            let _ = writeln!(
                s,
                "        %ac = arith.mulf %xa, %cs : f32\n\
                 \x20       %bs = arith.mulf %xb, %sn : f32\n\
                 \x20       %y0 = arith.subf %ac, %bs : f32\n\
                 \x20       %bc = arith.mulf %xb, %cs : f32\n\
                 \x20       %as = arith.mulf %xa, %sn : f32\n\
                 \x20       %y1 = arith.addf %bc, %as : f32\n\
                 \x20       memref.store %y0, %c[%e] : memref<{nc}xf32>\n\
                 \x20       memref.store %y1, %c[%e2] : memref<{nc}xf32>\n\
                 \x20     }}\n\
                 \x20     }}"
            );
        }
        RowOp::Softmax { scale } => {
            // z = x scale + mask; the row's maximum (from -inf); a row of -inf gives zeros; else exp(z - max)
            // over its sum, in order.
            let _ = writeln!(
                s,
                "      %scale = arith.constant 0x{:08X} : f32\n      %ninf = arith.constant 0xFF800000 : f32",
                scale.to_bits()
            );
            let z = |s: &mut String| {
                elem(s, "        %v");
                load(s, "        %mk", "b", "%e", nb, tb);
                s.push_str("        %vs = arith.mulf %v, %scale : f32\n        %z = arith.addf %vs, %mk : f32\n");
            };
            fold(s, "      ", "mx", ("j", "w"), "%ninf", |s| {
                z(s);
                s.push_str("        %next = arith.maximumf %acc, %z : f32\n");
            });
            s.push_str("      %dead = arith.cmpf oeq, %mx, %ninf : f32\n");
            fold(s, "      ", "sum", ("j", "w"), "%zero", |s| {
                z(s);
                s.push_str(
                    "        %d = arith.subf %z, %mx : f32\n\
                     \x20       %ex = math.exp %d : f32\n\
                     \x20       %y = arith.select %dead, %zero, %ex : f32\n",
                );
                store(s, "%y");
                s.push_str("        %next = arith.addf %acc, %y : f32\n");
            });
            s.push_str("      scf.for %j = %i0 to %w step %i1 {\n        %e = arith.addi %row, %j : index\n");
            let _ = writeln!(s, "        %y = memref.load %c[%e] : memref<{nc}xf32>");
            s.push_str("        %q = arith.divf %y, %sum : f32\n        %o = arith.select %dead, %zero, %q : f32\n");
            store(s, "%o");
            s.push_str("      }\n");
        }
    }
}

/// What the NPU target's core-body tests share: the bodies every kind is tried at, random tiles for one, and
/// the designs at the model shapes.
#[cfg(test)]
pub(crate) mod bodies {
    use super::super::design::{q8, AttentionRounds, CoreBody, Design, RowOp, RowPieces};
    use super::super::emu::{attention_finish, bf16, AttentionTile};
    use super::body_buffers;

    /// A model's widths: `(hidden, ffn, q, kv, head_dim)`, `q` and `kv` those of the q and of the k (or v)
    /// projection.
    pub(crate) type ModelShape = (u64, u64, u64, u64, u64);

    /// Llama-3.2-1B's and Llama-3.1-8B's.
    pub(crate) const LLAMA_SHAPES: [ModelShape; 2] = [(2048, 8192, 2048, 512, 64), (4096, 14336, 4096, 1024, 128)];

    /// A model's four projections, `(n, k)`: q / k / v, o, gate / up, down.
    pub(crate) fn projections((hidden, ffn, q, kv, _): ModelShape) -> [(u64, u64); 4] {
        [(q + 2 * kv, hidden), (hidden, q), (2 * ffn, hidden), (hidden, ffn)]
    }

    /// A model's row-wise ops and their widths: the norm, the GLU, RoPE of q and of k, the softmax over 512
    /// scores.
    pub(crate) fn row_ops((hidden, ffn, q, kv, hd): ModelShape) -> [(RowOp, u64); 5] {
        [
            (RowOp::RmsNorm { eps: 1e-5 }, hidden),
            (RowOp::SiluGlu, ffn),
            (RowOp::Rope { head_dim: hd }, q),
            (RowOp::Rope { head_dim: hd }, kv),
            (RowOp::Softmax { scale: 0.125 }, 512),
        ]
    }

    /// The designs at [`LLAMA_SHAPES`] (prefill 512 and decode): each projection's GEMM and GEMVs (bf16 and
    /// int8), the row-wise designs and the prefill attention.
    pub(crate) fn model_designs() -> Vec<Design> {
        use super::super::{attention::*, gemm::gemm, gemv::*, model::NPU1, rows::rows};
        let mut designs = Vec::new();
        for shape in LLAMA_SHAPES {
            for (n, k) in projections(shape) {
                designs.push(gemm(&NPU1, 512, k, n).design);
                designs.push(gemv(&NPU1, n, k).design);
                designs.push(gemv_q8(&NPU1, n, k).design);
            }
            for (op, width) in row_ops(shape) {
                designs.push(rows(&NPU1, op, 512, width).unwrap().design);
            }
            designs.push(attention(&NPU1, llama_prefill(shape.4, 512)).design);
        }
        designs
    }

    /// One body of every non-attention kind (both GEMM layouts), at small shapes.
    pub(crate) fn small() -> Vec<CoreBody> {
        vec![
            CoreBody::MatMul { m: 8, k: 16, n: 8, k_tiles: 1, bt: false },
            CoreBody::MatMul { m: 64, k: 32, n: 64, k_tiles: 4, bt: false },
            CoreBody::MatMul { m: 8, k: 16, n: 12, k_tiles: 1, bt: true },
            CoreBody::MatVec { rows: 6, k: 64, k_tiles: 1 },
            CoreBody::MatVecQ8 { rows: 5, k: 96, k_tiles: 1 },
            CoreBody::Rows { op: RowOp::RmsNorm { eps: 1e-5 }, rows: 3, width: 40 },
            CoreBody::Rows { op: RowOp::SiluGlu, rows: 2, width: 24 },
            CoreBody::Rows { op: RowOp::Rope { head_dim: 8 }, rows: 3, width: 16 },
            CoreBody::Rows { op: RowOp::Softmax { scale: 0.3 }, rows: 3, width: 10 },
        ]
    }

    /// `n` random bf16 values in (-2, 2).
    pub(crate) fn rand(n: u64, seed: &mut u64) -> Vec<f32> {
        super::super::random(n, seed, 2.0).into_iter().map(bf16).collect()
    }

    /// `rows` q8 rows of `k` (bytes, [`q8`]): random blocks whose scales span 2^-6 .. 2^6 from block to block,
    /// row 0's first block zero (scale 0), and each row's last block with its scale and quants negated (the same
    /// values, the scale's sign bit set); some scale's low byte has its top bit set, as a byte read signed would
    /// get wrong.
    pub(crate) fn q8_rows(rows: u64, k: u64, seed: &mut u64) -> Vec<f32> {
        let (bk, bb) = (q8::BLOCK as usize, q8::BLOCK_BYTES as usize);
        let mut w = rand(rows * k, seed);
        for (e, v) in w.iter_mut().enumerate() {
            let (r, blk) = (e / k as usize, e % k as usize / bk);
            *v *= (2.0f32).powi(((blk * 5 + r) % 13) as i32 - 6);
        }
        w[..bk].fill(0.0);
        let mut a: Vec<f32> = w.chunks(k as usize).flat_map(q8::quantize_row).collect();
        for row in a.chunks_mut(q8::row_bytes(k) as usize) {
            let at = row.len() - bb;
            let blk = &mut row[at..];
            let d = q8::scale(blk[0], blk[1]);
            blk[..2].copy_from_slice(&q8::scale_bytes(-d));
            blk[2..].iter_mut().for_each(|q| *q = -*q);
        }
        assert!(a.chunks(bb).any(|blk| blk[0] < 0.0), "no scale with the top bit of its low byte set");
        a
    }

    /// A body's operands and the result buffer it starts from: random bf16 tiles; random q8 rows
    /// ([`q8_rows`]) by x of a wide range; a RoPE table of cosines and sines; a causal mask with a row masked entirely; matrix bodies
    /// accumulating into what C held.
    pub(crate) fn tiles(b: CoreBody, seed: &mut u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let [(na, _), (nb, tb), (nc, _)] = body_buffers(b).expect("not attention");
        let a = match b {
            CoreBody::MatVecQ8 { rows, k, .. } => q8_rows(rows, k, seed),
            _ => rand(na, seed),
        };
        let mut bv = rand(nb, seed);
        if tb == "f32" {
            bv = (0..nb).map(|i| (i as f32 * 0.37).cos()).collect();
        }
        if let CoreBody::MatVecQ8 { .. } = b {
            // x over 2^-16 .. 2: a block's products then span more than f32's 24 bits, so that its sum depends
            // on the order it is taken in.
            bv.iter_mut().enumerate().for_each(|(i, v)| *v *= (2.0f32).powi(-((i as i32 * 5) % 17)));
        }
        if let CoreBody::Rows { op: RowOp::Softmax { .. }, width, .. } = b {
            bv = (0..nb)
                .map(|e| if e % width <= e / width + 3 && e / width != 1 { 0.0 } else { f32::NEG_INFINITY })
                .collect();
        }
        let c: Vec<f32> = match b {
            CoreBody::MatMul { .. } | CoreBody::MatVec { .. } | CoreBody::MatVecQ8 { .. } => rand(nc, seed),
            _ => vec![0.0; nc as usize],
        };
        (a, bv, c)
    }

    /// The attention body of the JIT tests: blocks of 4 rows, tiles of 8 keys, with `window`; heads of 16
    /// without a window (one vector of 16 lanes a row of a tile), of 12 with one (three of 4 lanes).
    pub(crate) fn attention(window: u64) -> CoreBody {
        let rounds = AttentionRounds {
            rows: 4,
            max_keys: 24,
            heads: 1,
            kv_heads: 1,
            columns: 1,
            per_col: 1,
            window,
            scale: 0.3,
            column: 0,
        };
        let head_dim = if window == 0 { 16 } else { 12 };
        CoreBody::Attention { q_rows: 4, keys: 8, head_dim, rounds, slot: 0 }
    }

    /// The runtime values and first row of the JIT tests' attention blocks, `(q0, kv_len, row0)`: rows at 9..13
    /// with 12 keys (the last row padding, the third tile past `kv_len`), at 5..9 with 9, and at 13..17 with
    /// 20 (a window of 6 hides the first tile).
    pub(crate) const ATTENTION_CASES: [(u64, u64, u64); 3] = [(9, 12, 0), (3, 9, 2), (3, 20, 10)];

    /// One block of [`attention`]`(window)` at `(q0, kv_len, row0)`: random Q, and three K/V tiles at keys 0,
    /// 8 and 16 (random, but NaN where the block does not compute on the tile, which must then not be read);
    /// what the emulator leaves after folding them in order — each row's maximum and sum — and the finished
    /// output.
    pub(crate) struct AttentionCase {
        pub(crate) q: Vec<f32>,
        pub(crate) tiles: Vec<(Vec<f32>, u64)>,
        // Read by the JIT tests (feature `mlir`) alone.
        #[cfg_attr(not(feature = "mlir"), allow(dead_code))]
        pub(crate) m: Vec<f32>,
        #[cfg_attr(not(feature = "mlir"), allow(dead_code))]
        pub(crate) l: Vec<f32>,
        pub(crate) want: Vec<f32>,
        /// Tiles the block skips.
        pub(crate) skipped: usize,
    }

    pub(crate) fn attention_case(window: u64, (q0, kv_len, row0): (u64, u64, u64)) -> AttentionCase {
        let CoreBody::Attention { q_rows, keys, head_dim: hd, rounds, .. } = attention(window) else { unreachable!() };
        let tile = AttentionTile { q_rows, keys, head_dim: hd, window, scale: rounds.scale };
        let mut seed = 5 + window + q0 + row0;
        let q = rand(q_rows * hd, &mut seed);
        let tiles: Vec<(Vec<f32>, u64)> = [0, 8, 16]
            .into_iter()
            .map(|key0| {
                let kv = rand(2 * keys * hd, &mut seed);
                let seen = tile.computes(key0, q0 + row0, kv_len);
                (if seen { kv } else { vec![f32::NAN; kv.len()] }, key0)
            })
            .collect();
        let (mut m, mut l, mut o) =
            (vec![f32::NEG_INFINITY; q_rows as usize], vec![0.0; q_rows as usize], vec![0.0; (q_rows * hd) as usize]);
        let skipped = tiles
            .iter()
            .filter(|(kv, key0)| !tile.fold(&q, kv, &mut m, &mut l, &mut o, *key0, q0 + row0, kv_len))
            .count();
        let want = attention_finish(&o, &l, hd as usize);
        assert!(want.iter().all(|v| v.is_finite()), "{window} {q0} {kv_len} {row0}");
        AttentionCase { q, tiles, m, l, want, skipped }
    }

    /// Bodies of rows in pieces at a small shape: RMSNorm and the softmax over rows of 40 in pieces of 16 (the
    /// last piece ragged: 8 of its 16 elements in the row).
    pub(crate) fn in_pieces() -> Vec<RowPieces> {
        vec![
            RowPieces { op: RowOp::RmsNorm { eps: 1e-5 }, width: 40, piece: 16 },
            RowPieces { op: RowOp::Softmax { scale: 0.3 }, width: 40, piece: 16 },
        ]
    }

    /// A row of `rp` as its pieces of x and of the second operand — the weights, or the mask: every key hidden
    /// where `hidden`, else the whole first piece and every third key after it — with NaN in the pad, which
    /// the bodies must not read. The row's largest x is in its last piece (its last key but one), so that the
    /// softmax's running maximum rises after its sum has begun.
    pub(crate) fn piece_tiles(rp: RowPieces, hidden: bool, seed: &mut u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let (p, w) = (rp.piece as usize, rp.width as usize);
        let pad = |v: Vec<f32>| -> Vec<f32> {
            v.into_iter().enumerate().map(|(i, x)| if i < w { x } else { f32::NAN }).collect()
        };
        let n = rp.pieces() as usize * p;
        let mut x = pad(rand(n as u64, seed));
        x[w - 2] = 3.0;
        let b = match rp.op {
            RowOp::Softmax { .. } => {
                pad((0..n).map(|i| if hidden || i < p || i % 3 == 0 { f32::NEG_INFINITY } else { 0.0 }).collect())
            }
            _ => pad(rand(n as u64, seed)),
        };
        (x.chunks(p).map(<[f32]>::to_vec).collect(), b.chunks(p).map(<[f32]>::to_vec).collect())
    }

    /// What the emulator computes for a row of `rp` from its pieces: each piece's output, and the row's
    /// statistics after pass 1.
    pub(crate) fn piece_outputs(rp: RowPieces, xs: &[Vec<f32>], bs: &[Vec<f32>]) -> (Vec<Vec<f32>>, [f32; 2]) {
        let mut stats = [f32::NAN; 2];
        for (j, (x, b)) in xs.iter().zip(bs).enumerate() {
            let second: &[f32] = if rp.stats_read_second() { b } else { &[] };
            rp.stats(j as u64, x, second, &mut stats);
        }
        let outs = xs
            .iter()
            .zip(bs)
            .enumerate()
            .map(|(j, (x, b))| {
                let mut y = vec![f32::NAN; rp.piece as usize];
                rp.out(j as u64, x, b, &stats, &mut y);
                y
            })
            .collect();
        (outs, stats)
    }
}

/// LLVM 19's MLIR tools, run as processes by the NPU target's tests.
#[cfg(test)]
pub(crate) mod llvm {
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// An LLVM 19 MLIR tool: `$UNICORN_MLIR_TOOLS/NAME`, Debian's `/usr/lib/llvm-19/bin/NAME`, or `NAME-19` on
    /// the PATH (`mlir-19-tools`, which `.ci/deps` installs).
    pub(crate) fn tool(name: &str) -> std::path::PathBuf {
        if let Some(dir) = std::env::var_os("UNICORN_MLIR_TOOLS") {
            return std::path::Path::new(&dir).join(name);
        }
        let debian = std::path::Path::new("/usr/lib/llvm-19/bin").join(name);
        if debian.exists() {
            return debian;
        }
        let on_path = format!("{name}-19");
        assert!(
            Command::new(&on_path).arg("--version").output().is_ok(),
            "{name} of LLVM 19 not found: install mlir-19-tools (.ci/deps does) or set UNICORN_MLIR_TOOLS"
        );
        on_path.into()
    }

    /// Run `tool` with `args` on `input`; its stdout, or a panic with its stderr.
    pub(crate) fn pipe(tool_path: &std::path::Path, args: &[&str], input: &str, what: &str) -> String {
        let mut child = Command::new(tool_path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", tool_path.display()));
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {} failed:\n{}",
            tool_path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::super::design::RowOp;
    use super::super::emu::body;
    use super::llvm::{pipe, tool};
    use super::*;

    /// A mutable global holding `v` as `ty` (bf16 values must already be bf16; i8 values bytes; i32 values
    /// integers), by its raw bytes.
    fn global(name: &str, v: &[f32], ty: &str) -> String {
        let mut hex = String::new();
        for x in v {
            if ty == "i32" {
                for b in (*x as i32).to_le_bytes() {
                    let _ = write!(hex, "{b:02X}");
                }
            } else if ty == "bf16" {
                for b in ((x.to_bits() >> 16) as u16).to_le_bytes() {
                    let _ = write!(hex, "{b:02X}");
                }
            } else if ty == "i8" {
                let _ = write!(hex, "{:02X}", *x as i8 as u8);
            } else {
                for b in x.to_bits().to_le_bytes() {
                    let _ = write!(hex, "{b:02X}");
                }
            }
        }
        format!("memref.global \"private\" @{name} : memref<{}x{ty}> = dense<\"0x{hex}\">\n", v.len())
    }

    /// A module of `funcs`, mutable globals of `globals` (name, values, element type) and a `main` that runs
    /// `calls` (with `%NAME` bound to each global) and prints global `print`'s elements, lowered to LLVM and
    /// run on the CPU: those elements afterwards, bit for bit.
    fn run_main(funcs: &str, globals: &[(&str, &[f32], &str)], calls: &str, print: &str) -> Vec<f32> {
        let mut m = format!("module {{\n{funcs}");
        let mut main = String::from("func.func @main() {\n");
        let mut printed = 0;
        for &(name, v, ty) in globals {
            m.push_str(&global(name, v, ty));
            let _ = writeln!(main, "  %{name} = memref.get_global @{name} : memref<{}x{ty}>", v.len());
            if name == print {
                printed = v.len();
            }
        }
        let _ = write!(
            m,
            "llvm.mlir.global internal constant @fmt(\"%08x\\0A\\00\") {{addr_space = 0 : i32}}\n\
             llvm.func @printf(!llvm.ptr, ...) -> i32\n\
             {main}{calls}\
             \x20 %fmt = llvm.mlir.addressof @fmt : !llvm.ptr\n\
             \x20 %i0 = arith.constant 0 : index\n\
             \x20 %i1 = arith.constant 1 : index\n\
             \x20 %n = arith.constant {printed} : index\n\
             \x20 scf.for %i = %i0 to %n step %i1 {{\n\
             \x20   %v = memref.load %{print}[%i] : memref<{printed}xf32>\n\
             \x20   %bits = arith.bitcast %v : f32 to i32\n\
             \x20   %r = llvm.call @printf(%fmt, %bits) vararg(!llvm.func<i32 (ptr, ...)>) : (!llvm.ptr, i32) -> i32\n\
             \x20 }}\n\
             \x20 return\n\
             }}\n}}\n"
        );
        let flags: Vec<String> = LLVM_LOWERING.iter().map(|p| format!("--{p}")).collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let lowered = pipe(&tool("mlir-opt"), &flags, &m, print);
        let out = pipe(&tool("mlir-cpu-runner"), &["-e", "main", "-entry-point-result=void"], &lowered, print);
        out.lines().map(|l| f32::from_bits(u32::from_str_radix(l.trim(), 16).unwrap())).collect()
    }

    /// Lower `body`'s function to LLVM and run it on the CPU over `a`, `b` and the result buffer starting as
    /// `c`; the result buffer after it, bit for bit.
    fn jit(b: CoreBody, a: &[f32], bv: &[f32], c: &[f32]) -> Vec<f32> {
        let [(na, ta), (nb, tb), (nc, tc)] = body_buffers(b).unwrap();
        let call = format!(
            "  call @{}(%a, %b, %c) : (memref<{na}x{ta}>, memref<{nb}x{tb}>, memref<{nc}x{tc}>) -> ()\n",
            body_name(b)
        );
        run_main(&core_body(b).unwrap(), &[("a", a, ta), ("b", bv, tb), ("c", c, tc)], &call, "c")
    }

    /// Each body JIT-run on random tiles gives the emulator's result bit for bit (the emulator's arithmetic is
    /// held to an f64 reference by the designs' tests): bf16 operands widened, f32 sums in the same order,
    /// accumulating into what the result buffer held.
    #[test]
    fn core_bodies_run_on_the_cpu_as_the_emulator_computes_them() {
        let mut seed = 99;
        for b in super::bodies::small() {
            let (a, bv, c) = super::bodies::tiles(b, &mut seed);
            let mut want = c.clone();
            body(b, &a, &bv, &mut want);
            let got = jit(b, &a, &bv, &c);
            assert_eq!(got.len(), want.len(), "{}", body_name(b));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(g.to_bits() == w.to_bits(), "{} [{i}]: the JIT gives {g}, the emulator {w}", body_name(b));
            }
        }
    }

    /// The attention body JIT-run over three tiles of a block, then finished, gives the emulator's outputs bit
    /// for bit, the dispatch's `q0` and `kv_len` read from the parameter buffer ([`super::bodies::ATTENTION_CASES`]):
    /// the causal mask, a window that hides the first keys from the later rows, a row at `kv_len` (padding:
    /// zeros), keys past `kv_len` in a tile (masked), and tiles of NaN that the block skips (wholly past
    /// `kv_len`, which a read would spread into the outputs, or before the window); the same function at three
    /// pairs of values and first rows.
    #[test]
    fn the_attention_body_runs_on_the_cpu_as_the_emulator_computes_it() {
        let mut skipped = 0;
        for window in [0u64, 6] {
            let b = super::bodies::attention(window);
            let CoreBody::Attention { q_rows, keys, head_dim: hd, .. } = b else { unreachable!() };
            let name = body_name(b);
            let (nq, nkv, no) = (q_rows * hd, 2 * keys * hd, q_rows * hd);
            for case in super::bodies::ATTENTION_CASES {
                let c = super::bodies::attention_case(window, case);
                skipped += c.skipped;
                let tile_ty = format!(
                    "(memref<{nq}xbf16>, memref<{nkv}xbf16>, memref<{q_rows}xf32>, memref<{q_rows}xf32>, \
                     memref<{no}xf32>, memref<2xi32>, index, index) -> ()"
                );
                let mut calls = format!("  %row = arith.constant {} : index\n", case.2);
                for (i, (_, key0)) in c.tiles.iter().enumerate() {
                    let _ = writeln!(
                        calls,
                        "  %at{i} = arith.constant {key0} : index\n\
                         \x20 call @{name}_tile(%q, %kv{i}, %m, %l, %o, %rtp, %at{i}, %row) : {tile_ty}"
                    );
                }
                let _ = writeln!(
                    calls,
                    "  call @{name}_finish(%o, %l, %out) : (memref<{no}xf32>, memref<{q_rows}xf32>, memref<{no}xf32>) -> ()"
                );
                let (m0, l0) = (vec![f32::NEG_INFINITY; q_rows as usize], vec![0.0; q_rows as usize]);
                let (o0, out0) = (vec![0.0; no as usize], vec![f32::NAN; no as usize]);
                let rtp = [case.0 as f32, case.1 as f32];
                let names: Vec<String> = (0..c.tiles.len()).map(|i| format!("kv{i}")).collect();
                let mut globals: Vec<(&str, &[f32], &str)> = vec![("q", &c.q, "bf16")];
                globals.extend(names.iter().zip(&c.tiles).map(|(n, (kv, _))| (n.as_str(), &kv[..], "bf16")));
                globals.extend([("m", &m0[..], "f32"), ("l", &l0, "f32"), ("o", &o0, "f32"), ("rtp", &rtp, "i32")]);
                globals.push(("out", &out0, "f32"));
                let got = run_main(&core_body(b).unwrap(), &globals, &calls, "out");
                assert_eq!(got.len(), c.want.len());
                for (i, (g, w)) in got.iter().zip(&c.want).enumerate() {
                    assert!(g.to_bits() == w.to_bits(), "{name} {case:?} [{i}]: the JIT gives {g}, the emulator {w}");
                }
            }
        }
        assert!(skipped >= 2, "tiles skipped by kv_len and by the window: {skipped}");
    }

    /// The distinct core bodies of every design at the Llama-3.2-1B and Llama-3.1-8B shapes (prefill 512 and
    /// decode), by name.
    fn model_bodies() -> Vec<CoreBody> {
        let designs = super::bodies::model_designs();
        let mut seen = std::collections::BTreeMap::new();
        for c in designs.iter().flat_map(|d| &d.cores) {
            seen.entry(body_name(c.body)).or_insert(c.body);
        }
        seen.into_values().collect()
    }

    /// Every core body the designs at the two model shapes use verifies as standalone MLIR (LLVM 19's
    /// verifier, through mlir-opt).
    #[test]
    fn every_core_body_of_the_model_designs_verifies() {
        let bodies = model_bodies();
        let mut module = String::from("module {\n");
        for b in &bodies {
            module.push_str(&core_body(*b).unwrap_or_else(|| panic!("{} has no MLIR", body_name(*b))));
        }
        module.push_str("}\n");
        assert!(bodies.len() >= 12, "{} bodies", bodies.len());
        assert!(bodies.iter().any(|b| matches!(b, CoreBody::Attention { .. })), "no attention body");
        let printed = pipe(&tool("mlir-opt"), &[], &module, "the model designs' bodies");
        for b in &bodies {
            assert!(printed.contains(&format!("func.func @{}", body_name(*b))), "{} lost", body_name(*b));
        }
    }

    /// The MLIR of the GEMM, GEMV (bf16 and int8) and attention bodies at the two model shapes' tiles (both models' GEMMs take
    /// 64 x 32 x 64; the JIT test's 8 x 16 x 8 is the second GEMM shape), so that a change to what is emitted
    /// shows in review.
    #[test]
    fn core_body_snapshots() {
        for b in model_bodies().into_iter().chain([CoreBody::MatMul { m: 8, k: 16, n: 8, k_tiles: 1, bt: false }]) {
            if let (
                CoreBody::MatMul { .. }
                | CoreBody::MatVec { .. }
                | CoreBody::MatVecQ8 { .. }
                | CoreBody::Attention { .. },
                Some(f),
            ) = (b, core_body(b))
            {
                insta::assert_snapshot!(format!("npu_{}", body_name(b)), f);
            }
        }
    }

    /// The bodies of rows in pieces — RMSNorm of Llama-3.1-70B's 8,192-wide rows and of ragged 12,000-wide
    /// ones, the softmax over 16,384 scores — verify as standalone MLIR (LLVM 19's verifier, through
    /// mlir-opt); the 8,192 and 16,384 ones are snapshots.
    #[test]
    fn the_bodies_of_rows_in_pieces_verify() {
        use super::super::{model::NPU1, rows::rows};
        let mut module = String::from("module {\n");
        let mut names = Vec::new();
        for (op, width) in [
            (RowOp::RmsNorm { eps: 1e-5 }, 8192),
            (RowOp::RmsNorm { eps: 1e-5 }, 12000),
            (RowOp::Softmax { scale: 0.125 }, 16384),
        ] {
            let g = rows(&NPU1, op, 512, width).unwrap();
            let b = g.design.cores[0].body;
            assert!(matches!(b, CoreBody::RowPieces(_)), "{op:?} {width}: {b:?}");
            let f = core_body(b).unwrap();
            module.push_str(&f);
            names.push(body_name(b));
            if width != 12000 {
                insta::assert_snapshot!(format!("npu_{}", body_name(b)), f);
            }
        }
        module.push_str("}\n");
        let printed = pipe(&tool("mlir-opt"), &[], &module, "the bodies of rows in pieces");
        for n in &names {
            for f in ["stats", "out"] {
                assert!(printed.contains(&format!("func.func @{n}_{f}(")), "{n}_{f} lost");
            }
        }
    }

    /// The two functions of rows in pieces, JIT-run on the CPU over a row's pieces (pass 1 over every piece,
    /// then pass 2), give the emulator's statistics and outputs bit for bit: RMSNorm, and the softmax with its
    /// first piece masked, some keys of the others masked, and a row masked entirely (zeros); the ragged last
    /// piece's pad NaN on the way in and zeros on the way out.
    #[test]
    fn the_bodies_of_rows_in_pieces_run_on_the_cpu_as_the_emulator_computes_them() {
        let mut seed = 31;
        for rp in super::bodies::in_pieces() {
            for hidden in [false, true] {
                if hidden && !rp.stats_read_second() {
                    continue;
                }
                let (xs, bs) = super::bodies::piece_tiles(rp, hidden, &mut seed);
                let (outs, stats) = super::bodies::piece_outputs(rp, &xs, &bs);
                let b = CoreBody::RowPieces(rp);
                let name = body_name(b);
                let (p, n) = (rp.piece, rp.pieces());
                let (tx, ts, ty) = (format!("memref<{p}xbf16>"), "memref<2xf32>", format!("memref<{p}xf32>"));
                let mut globals: Vec<(String, Vec<f32>, &str)> = Vec::new();
                for j in 0..n as usize {
                    globals.push((format!("x{j}"), xs[j].clone(), "bf16"));
                    globals.push((format!("b{j}"), bs[j].clone(), "bf16"));
                    globals.push((format!("y{j}"), vec![f32::NAN; p as usize], "f32"));
                }
                // The statistics start as NaN: piece 0 must start them afresh.
                globals.push(("s".into(), vec![f32::NAN; 2], "f32"));
                // Every output piece and then the statistics, to print.
                globals.push(("all".into(), vec![f32::NAN; (n * p + 2) as usize], "f32"));
                let mut calls = String::from(
                    "  %z0 = arith.constant 0 : index\n  %o1 = arith.constant 1 : index\n  %two = arith.constant 2 : index\n",
                );
                let _ = writeln!(calls, "  %pc = arith.constant {p} : index");
                let second = if rp.stats_read_second() { format!(", {tx}") } else { String::new() };
                for j in 0..n {
                    let b = if rp.stats_read_second() { format!("%b{j}, ") } else { String::new() };
                    let _ = writeln!(
                        calls,
                        "  %j{j} = arith.constant {j} : index\n\
                         \x20 call @{name}_stats(%x{j}, {b}%s, %j{j}) : ({tx}{second}, {ts}, index) -> ()"
                    );
                }
                for j in 0..n {
                    let _ = writeln!(
                        calls,
                        "  call @{name}_out(%x{j}, %b{j}, %s, %y{j}, %j{j}) : ({tx}, {tx}, {ts}, {ty}, index) -> ()\n\
                         \x20 %at{j} = arith.constant {} : index\n\
                         \x20 scf.for %t = %z0 to %pc step %o1 {{\n\
                         \x20   %v = memref.load %y{j}[%t] : {ty}\n\
                         \x20   %e = arith.addi %t, %at{j} : index\n\
                         \x20   memref.store %v, %all[%e] : memref<{}xf32>\n\
                         \x20 }}",
                        j * p,
                        n * p + 2
                    );
                }
                let _ = writeln!(
                    calls,
                    "  %sat = arith.constant {} : index\n\
                     \x20 scf.for %t = %z0 to %two step %o1 {{\n\
                     \x20   %v = memref.load %s[%t] : {ts}\n\
                     \x20   %e = arith.addi %t, %sat : index\n\
                     \x20   memref.store %v, %all[%e] : memref<{}xf32>\n\
                     \x20 }}",
                    n * p,
                    n * p + 2
                );
                let refs: Vec<(&str, &[f32], &str)> =
                    globals.iter().map(|(n, v, t)| (n.as_str(), &v[..], *t)).collect();
                let got = run_main(&core_body(b).unwrap(), &refs, &calls, "all");
                let want: Vec<f32> = outs.concat().into_iter().chain(stats).collect();
                assert_eq!(got.len(), want.len(), "{name}");
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(g.to_bits() == w.to_bits(), "{name} [{i}]: the JIT gives {g}, the emulator {w}");
                }
                if hidden {
                    assert!(want[..(n * p) as usize].iter().all(|&v| v == 0.0), "{name}: a row masked entirely");
                }
            }
        }
    }
}
