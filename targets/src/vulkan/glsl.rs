//! GLSL generation for the Vulkan target: one compute shader per kernel, generated from a few templates with
//! the weight format and the sizes generated into the source (as `#define`s, not specialization constants: see
//! the ABI below).
//!
//! The kernel ABI, shared by every shader here and the Vulkan executor:
//! - binding `i` of descriptor set 0 is the step's `i`-th buffer argument (activations, weights, the KV cache,
//!   the token ids); scalar arguments are not bound;
//! - a push-constant block `Push { uint rows; uint pos; uint keep; uint cap; uint pass; uint base[12]; }`: the launch's rows
//!   (`S`, or `R` for the kept rows), the position of its first row, the kept rows, the KV cache's ring capacity,
//!   and per buffer argument the offset of its first element, in 32-bit words, inside its binding (an activation
//!   slot's start depends on the rows of the execution, so it is not known when the plan is written);
//! - the op's sizes and constants are generated into the source as `#define`s (floats by their exact bits), as
//!   is the workgroup size: naga's SPIR-V reader takes neither a specialization-constant workgroup size nor the
//!   `OpSpecConstantOp`s that arithmetic on specialization constants becomes, and every module is validated;
//! - `pc.pass` selects the pass of a kernel the executor launches more than once (attention: 0 attends, 1
//!   appends to the cache; for one row, 2 attends in key ranges and appends, the last range to finish
//!   combining them, with `pc.keep` the number of ranges);
//! - attention's KV binding holds the cache's keys and values, then room for the split partials
//!   ([`unicorn_ir::plan::vulkan_abi::attention_scratch_words`]), which the executor allocates with the cache.
//!
//! Weights are read as 32-bit words: f32, f16 and bf16 matrices row after row; q8_0 / q4_0 matrices in the
//! [`unicorn_ir::quant::WeightLayout::Interleaved8`] layout the CPU kernels read too, which puts every scale
//! and every four quant bytes of a group of eight rows on a word boundary. Activations are f32.

use std::fmt::Write;
use unicorn_ir::device::{Feature, COOPMAT_F16_F32};
use unicorn_ir::spec::Activation;
use unicorn_ir::WeightFormat;

pub use unicorn_ir::plan::vulkan_abi::{
    argmax_scratch_words, top_k_groups, top_k_scratch_words, ARGMAX_GROUPS, ATTN_MAX_SPLITS, ATTN_SPLIT_KEYS,
    ATTN_SPLIT_ROWS, MAX_BUFFERS, MAX_TOP_K, TOP_K_PER_THREAD, TOP_K_WORDS, VALUES_BINDING, WIDE,
};

/// Threads of a matmul workgroup: a 16 x 16 grid of 4 x 4 outputs in the tiled path, 256 column steps at a time
/// in the row-by-row path.
pub const MATMUL_THREADS: u32 = 256;

/// Rows of `x` one workgroup of the row-by-row path takes, one after another.
pub const MATMUL_TILE: u32 = 8;

/// Threads of an attention workgroup: in prefill, 16 query rows by 16 keys of a chunk; in a decode row's key
/// ranges, four per key of a chunk of 64.
pub const ATTN_THREADS: u32 = 256;

/// Query rows one prefill attention workgroup takes (pass 0 of [`attention`]).
pub const ATTN_TILE_ROWS: u32 = 16;

// The tiled path's thread layout: 64 rows x 4 quarters of a block to load, 16 x 16 to multiply.
const _: () = assert!(MATMUL_THREADS == 256);

fn header(out: &mut String, x: u32, y: u32) {
    header_with(out, x, y, &[]);
}

/// [`header`] with GLSL extensions enabled.
fn header_with(out: &mut String, x: u32, y: u32, extensions: &[&str]) {
    let _ = writeln!(out, "#version 450");
    for e in extensions {
        let _ = writeln!(out, "#extension {e} : require");
    }
    let _ = write!(
        out,
        "layout(local_size_x = {x}, local_size_y = {y}) in;\n\
         layout(push_constant) uniform Push {{ uint rows; uint pos; uint keep; uint cap; uint pass; uint base[{MAX_BUFFERS}]; }} pc;\n"
    );
}

/// The launch values ([`VALUES_BINDING`]) and `POS`, the launch's position, which `main` sets first
/// ([`SET_POS`]).
fn position(out: &mut String) {
    let _ = writeln!(
        out,
        "layout(std430, binding = {VALUES_BINDING}) readonly buffer Values {{ uint values[]; }};\nuint POS;"
    );
}

/// The first statement of the `main` of a kernel with [`position`].
const SET_POS: &str = "  POS = values[pc.pos];\n";

/// A storage buffer of floats; `access` is `readonly` or empty (a result: `writeonly` would be accurate, but the
/// `NonReadable` decoration glslang gives it is one naga's validator refuses).
fn f32_buffer(out: &mut String, binding: usize, name: &str, access: &str) {
    buffer(out, binding, "float", name, access);
}

fn u32_buffer(out: &mut String, binding: usize, name: &str, access: &str) {
    buffer(out, binding, "uint", name, access);
}

fn buffer(out: &mut String, binding: usize, ty: &str, name: &str, access: &str) {
    let q = if access.is_empty() { String::new() } else { format!("{access} ") };
    let _ = writeln!(out, "layout(std430, binding = {binding}) {q}buffer B{binding} {{ {ty} {name}[]; }};");
}

fn def_uint(out: &mut String, name: &str, v: u64) {
    let _ = writeln!(out, "#define {name} {v}u");
}

/// A float constant by its exact bits (a decimal literal could round differently).
fn def_float(out: &mut String, name: &str, v: f32) {
    let _ = writeln!(out, "#define {name} uintBitsToFloat(0x{:08x}u)", v.to_bits());
}

/// `float w_elem(uint row, uint i)`: element `i` of row `row` of the matrix bound as `w` (`K` columns, words
/// from `pc.base[arg]`), for any format.
fn weight_element(out: &mut String, format: WeightFormat, arg: usize) {
    let b = format!("pc.base[{arg}]");
    let body = match format {
        WeightFormat::F32 => format!("return uintBitsToFloat(w[{b} + row * K + i]);"),
        WeightFormat::F16 => format!(
            "uint e = row * K + i; vec2 h = unpackHalf2x16(w[{b} + e / 2u]); return (e & 1u) == 0u ? h.x : h.y;"
        ),
        WeightFormat::Bf16 => format!(
            "uint e = row * K + i; uint word = w[{b} + e / 2u]; \
             return uintBitsToFloat((e & 1u) == 0u ? word << 16 : word & 0xffff0000u);"
        ),
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
            let block_words = quant_words(format);
            let q = match format {
                WeightFormat::Q8_0 => String::from(
                    "uint word = w[at + 4u + (j / 4u) * 8u + r]; \
                     float q = float(bitfieldExtract(int(word), int((j % 4u) * 8u), 8));",
                ),
                _ => String::from(
                    "uint jb = j % 16u; uint word = w[at + 4u + (jb / 4u) * 8u + r]; \
                     uint byte = (word >> ((jb % 4u) * 8u)) & 0xffu; \
                     float q = float(int(j < 16u ? byte & 15u : byte >> 4) - 8);",
                ),
            };
            format!(
                "uint r = row % 8u, blk = i / 32u, j = i % 32u; \
                 uint at = {b} + ((row / 8u) * (K / 32u) + blk) * {block_words}u; \
                 vec2 d2 = unpackHalf2x16(w[at + r / 2u]); float d = (r & 1u) == 0u ? d2.x : d2.y; \
                 {q} return q * d;"
            )
        }
    };
    let _ = writeln!(out, "float w_elem(uint row, uint i) {{ {body} }}");
}

/// Words of one block index of an interleaved group: the 8 rows' f16 scales (4 words), then their quants.
fn quant_words(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::Q8_0 => 4 + 64,
        _ => 4 + 32,
    }
}

/// `embed_<format>`: row `t` of the table for each token, times `SCALE`.
/// Bindings [tokens, table, out]. Work: `[ceil(K / 64), rows, 1]`.
pub fn embed(format: WeightFormat, k: u64, scale: f32) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    u32_buffer(&mut s, 0, "tokens", "readonly");
    u32_buffer(&mut s, 1, "w", "readonly");
    f32_buffer(&mut s, 2, "y", "");
    def_uint(&mut s, "K", k);
    def_float(&mut s, "SCALE", scale);
    weight_element(&mut s, format, 1);
    s.push_str(
        "void main() {\n\
         \x20 uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y;\n\
         \x20 if (i >= K) return;\n\
         \x20 y[pc.base[2] + r * K + i] = w_elem(tokens[pc.base[0] + r], i) * SCALE;\n\
         }\n",
    );
    s
}

/// Elements of `x` one thread of the single-row path takes per step: eight columns, for all eight rows of an
/// interleaved group.
const GEMV_SPAN: u64 = 8;

/// Whether a matmul of `k` columns has the single-row path ([`matmul_group`]): its steps of eight columns
/// must tile the row.
pub fn has_gemv(k: u64) -> bool {
    k.is_multiple_of(GEMV_SPAN)
}

/// 16-byte words of one matrix that a single-row step reads ([`gemv_load`]): a quantized group's scales and
/// its quants for the step (q4_0: one pair, q8_0: two), or each of the eight rows' eight columns (f16 / bf16:
/// one word a row, f32: two).
fn gemv_words(format: WeightFormat) -> u32 {
    match format {
        WeightFormat::Q4_0 => 3,
        WeightFormat::Q8_0 => 5,
        WeightFormat::F16 | WeightFormat::Bf16 => 8,
        WeightFormat::F32 => 16,
    }
}

/// `void gemv_load(uint n0, uint i, out uvec4 wv[NW])`: the weight words of step `i` of the single-row path
/// of the matrix bound as `w` (binding `arg`, through its 16-byte alias `w4`) for rows `n0..n0 + 8`
/// ([`gemv_words`] of them), loaded apart from their use ([`gemv_mul`], [`gemv_dot_mul`]) so that a batch of
/// steps' loads are all in flight before the first is used. A quantized step is one quant word of each of the
/// group's eight rows (q4_0: a word holds columns `4c..4c + 4` and `16 + 4c..`; q8_0: two words, eight
/// neighbouring columns) after the group's scales, so the threads of a workgroup read the group's blocks front
/// to back; a float step is eight neighbouring columns of each row (zeros for rows past the matrix). Every
/// weight starts on a 16-byte boundary, and so does every block of an interleaved group and, `K` being a
/// multiple of eight, every float step.
fn gemv_load(out: &mut String, format: WeightFormat, arg: usize) {
    let b = format!("pc.base[{arg}]");
    let nw = gemv_words(format);
    let body = match format {
        WeightFormat::Q4_0 | WeightFormat::Q8_0 => {
            let (stride, quads) = if format == WeightFormat::Q4_0 { (8, 2) } else { (16, 4) };
            format!(
                "uint at = {b} + ((n0 / 8u) * (K / 32u) + i / 4u) * {bw}u;\n\
                 \x20 wv[0] = w4[at / 4u];\n\
                 \x20 uint qw = (at + 4u + (i % 4u) * {stride}u) / 4u;\n\
                 \x20 for (uint q = 0u; q < {quads}u; q++) wv[1u + q] = w4[qw + q];\n",
                bw = quant_words(format)
            )
        }
        WeightFormat::F16 | WeightFormat::Bf16 => format!(
            "for (uint r = 0u; r < 8u; r++) wv[r] = n0 + r < N_ROWS ? w4[({b} + ((n0 + r) * K + i * 8u) / 2u) / 4u] : uvec4(0u);\n"
        ),
        WeightFormat::F32 => format!(
            "for (uint r = 0u; r < 8u; r++) {{\n\
             \x20   uint a = ({b} + (n0 + r) * K + i * 8u) / 4u;\n\
             \x20   wv[2u * r] = n0 + r < N_ROWS ? w4[a] : uvec4(0u);\n\
             \x20   wv[2u * r + 1u] = n0 + r < N_ROWS ? w4[a + 1u] : uvec4(0u);\n\
             \x20 }}\n"
        ),
    };
    let _ = write!(out, "void gemv_load(uint n0, uint i, out uvec4 wv[{nw}]) {{\n\x20 {body}}}\n");
}

/// `void gemv_mul_<format>(uvec4 wv[NW], float xv[8], inout float acc[8])`: step `i`'s weight words
/// ([`gemv_load`]) times the eight elements of `x` that [`gemv_column`] names, added into the sums of the eight
/// rows. It reads no binding, so one serves every matrix of its format in a launch ([`gemv_muls`]).
fn gemv_mul(out: &mut String, format: WeightFormat) {
    let row_scale = "vec2 d2 = unpackHalf2x16(wv[0][r / 2u]); float d = (r & 1u) == 0u ? d2.x : d2.y;";
    let body = match format {
        WeightFormat::Q4_0 => format!(
            "for (uint r = 0u; r < 8u; r++) {{\n\
             \x20   {row_scale}\n\
             \x20   uint word = r < 4u ? wv[1][r] : wv[2][r - 4u];\n\
             \x20   float a = 0.0;\n\
             \x20   for (uint e = 0u; e < 4u; e++) {{\n\
             \x20     uint byte = (word >> (e * 8u)) & 0xffu;\n\
             \x20     a += float(int(byte & 15u) - 8) * xv[e] + float(int(byte >> 4) - 8) * xv[4u + e];\n\
             \x20   }}\n\
             \x20   acc[r] += a * d;\n\
             \x20 }}\n"
        ),
        WeightFormat::Q8_0 => format!(
            "for (uint r = 0u; r < 8u; r++) {{\n\
             \x20   {row_scale}\n\
             \x20   int qa = int(r < 4u ? wv[1][r] : wv[2][r - 4u]), qb = int(r < 4u ? wv[3][r] : wv[4][r - 4u]);\n\
             \x20   float a = 0.0;\n\
             \x20   for (uint e = 0u; e < 4u; e++)\n\
             \x20     a += float(bitfieldExtract(qa, int(e * 8u), 8)) * xv[e] + float(bitfieldExtract(qb, int(e * 8u), 8)) * xv[4u + e];\n\
             \x20   acc[r] += a * d;\n\
             \x20 }}\n"
        ),
        WeightFormat::F32 => String::from(
            "for (uint r = 0u; r < 8u; r++)\n\
             \x20   for (uint e = 0u; e < 8u; e++) acc[r] += uintBitsToFloat(wv[2u * r + e / 4u][e % 4u]) * xv[e];\n",
        ),
        WeightFormat::F16 | WeightFormat::Bf16 => {
            let pair = if format == WeightFormat::F16 {
                "vec2 h = unpackHalf2x16(word);"
            } else {
                "vec2 h = vec2(uintBitsToFloat(word << 16), uintBitsToFloat(word & 0xffff0000u));"
            };
            format!(
                "for (uint r = 0u; r < 8u; r++)\n\
                 \x20   for (uint e = 0u; e < 4u; e++) {{ uint word = wv[r][e]; {pair} acc[r] += h.x * xv[2u * e] + h.y * xv[2u * e + 1u]; }}\n"
            )
        }
    };
    let (nw, f) = (gemv_words(format), format.name());
    let _ = write!(out, "void gemv_mul_{f}(uvec4 wv[{nw}], float xv[8], inout float acc[8]) {{\n\x20 {body}}}\n");
}

/// Bytes of weights a thread of the single-row path loads per batch of steps ([`gemv_walk`]).
const GEMV_BATCH_BYTES: u32 = 192;

/// Steps of a batch of the single-row path for matrices of these formats, read together ([`gemv_walk`]): as
/// many as keep [`GEMV_BATCH_BYTES`] in flight per thread, at least one, at most the row's `steps`.
fn gemv_ahead(formats: &[WeightFormat], steps: u64) -> u64 {
    let per_step: u32 = formats.iter().map(|&f| 16 * gemv_words(f)).sum();
    ((GEMV_BATCH_BYTES / per_step).max(1) as u64).min(steps)
}

/// The single-row path's walk over one row of `x` (at `xr`), for one matrix or a fused GLU's two (`members`:
/// index, format and the name of its `float[8]` sums), each thread taking the steps `l, l + lanes, ...`.
/// The steps go in batches ([`gemv_ahead`]): a batch's weight words are all loaded ([`gemv_load`]) before
/// any is used, so that a thread keeps a batch's bytes in flight rather than a step's; the multiplications
/// follow ([`gemv_mul`], or [`gemv_dot_mul`] against the staged row with `dot`). The first batch's loads are
/// issued before the row is staged (`dot`: quantized into shared memory by the whole workgroup, its sum of
/// squares taken), so the staging hides their latency. A group past the matrix's outputs loads nothing but
/// still stages (the staging has barriers). Every loop has a constant trip count, for the compiler to unroll.
fn gemv_walk(members: &[(usize, WeightFormat, &str)], k: u64, lanes: u64, dot: bool, norm: bool) -> String {
    // One row of `x` is read for every member: their steps must name the same columns.
    assert!(
        members.iter().all(|m| gemv_column(m.1) == gemv_column(members[0].1)),
        "a walk's matrices read x in one column order"
    );
    let steps = (k / GEMV_SPAN).div_ceil(lanes);
    let formats: Vec<WeightFormat> = members.iter().map(|m| m.1).collect();
    let ahead = gemv_ahead(&formats, steps);
    // A step is skipped only where the row's steps do not fill every thread's batches.
    let ragged = !(k / GEMV_SPAN).is_multiple_of(lanes) || !steps.is_multiple_of(ahead);
    let guard = if ragged { "live && i < K / 8u" } else { "live" };
    let mut decls = String::new();
    let mut loads = String::new();
    let mut muls = String::new();
    for &(m, format, acc) in members {
        let nw = gemv_words(format);
        let _ = writeln!(decls, "\x20 uvec4 wv{m}[{ahead}][{nw}];");
        let _ = write!(loads, " gemv_load{m}(n0, i, wv{m}[u]);");
        let f = format.name();
        let mul = if dot {
            format!("gemv_dot_mul_{f}(i, wv{m}[u], {acc});")
        } else {
            format!("gemv_mul_{f}(wv{m}[u], xv, {acc});")
        };
        let _ = writeln!(muls, "\x20     {mul}");
    }
    let (stage, xv) = if dot {
        ("  float xsum = stage_x(xr, t);\n".to_string(), String::new())
    } else {
        (gemv_x_aligned(norm).to_string(), gemv_x(members[0].1, norm))
    };
    format!(
        "\x20 bool live = n0 < N{first};\n\
         {decls}\
         \x20 for (uint u = 0u; u < {ahead}u; u++) {{ uint i = l + u * LANES; if ({guard}) {{{loads} }} }}\n\
         {stage}\
         \x20 for (uint s0 = 0u; s0 < {steps}u; s0 += {ahead}u) {{\n\
         \x20   if (s0 > 0u) for (uint u = 0u; u < {ahead}u; u++) {{ uint i = l + (s0 + u) * LANES; if ({guard}) {{{loads} }} }}\n\
         \x20   for (uint u = 0u; u < {ahead}u; u++) {{\n\
         \x20     uint i = l + (s0 + u) * LANES;\n\
         \x20     if (!({guard})) continue;\n\
         {xv}\
         {muls}\
         \x20   }}\n\
         \x20 }}\n",
        first = members[0].0
    )
}

/// The column of element `e` (0..8) of single-row step `i` ([`gemv_mul`], whose `xv` [`gemv_x`] fills).
fn gemv_column(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::Q4_0 => "(i / 4u) * 32u + (e < 4u ? (i % 4u) * 4u + e : 16u + (i % 4u) * 4u + e - 4u)",
        _ => "i * 8u + e",
    }
}

/// The first columns of the two runs of four neighbouring columns that single-row step `i` reads
/// ([`gemv_column`]: elements 0..4 and 4..8).
fn gemv_runs(format: WeightFormat) -> (&'static str, &'static str) {
    match format {
        WeightFormat::Q4_0 => ("(i / 4u) * 32u + (i % 4u) * 4u", "(i / 4u) * 32u + 16u + (i % 4u) * 4u"),
        _ => ("i * 8u", "i * 8u + 4u"),
    }
}

/// The aliases of the operand `x` (binding 0) and, with a fused norm, of its weight `g` (binding 1) as 16-byte
/// words, for [`gemv_x`].
fn gemv_x_aliases(out: &mut String, norm: bool) {
    out.push_str("layout(std430, binding = 0) readonly buffer B0x16 { vec4 x4[]; };\n");
    if norm {
        out.push_str("layout(std430, binding = 1) readonly buffer B1x16 { vec4 g4[]; };\n");
    }
}

/// The statements (at the indentation of [`gemv_walk`]'s steps) of a single-row step that fill `float xv[8]`
/// with step `i`'s eight elements of the row of `x` at `xr` (scaled by the fused norm's weight, their squares
/// summed into `ss`, where `norm`). Where the row
/// and the norm weight start on 16-byte boundaries (`xw`, set once per row by [`gemv_x_aligned`]), as two
/// 16-byte loads each: eight scalar loads whose threads sit 32 bytes apart cost the load unit four times the
/// transactions of the weight loads they feed. Otherwise element by element. The same sums either way but
/// for the order of `ss`'s additions.
fn gemv_x(format: WeightFormat, norm: bool) -> String {
    let (c0, c1) = gemv_runs(format);
    let col = gemv_column(format);
    let (wide, narrow) = if norm {
        (
            "\x20       ss += dot(xa, xa) + dot(xb, xb);\n\
             \x20       xa *= g4[(pc.base[1] + c0) / 4u] + UNIT; xb *= g4[(pc.base[1] + c1) / 4u] + UNIT;\n",
            "float xe = x[xr + c]; ss += xe * xe; xv[e] = xe * (g[pc.base[1] + c] + UNIT);",
        )
    } else {
        ("", "xv[e] = x[xr + c];")
    };
    format!(
        "\x20     float xv[8];\n\
         \x20     if (xw) {{\n\
         \x20       uint c0 = {c0}, c1 = {c1};\n\
         \x20       vec4 xa = x4[(xr + c0) / 4u], xb = x4[(xr + c1) / 4u];\n\
         {wide}\
         \x20       for (uint e = 0u; e < 4u; e++) {{ xv[e] = xa[e]; xv[4u + e] = xb[e]; }}\n\
         \x20     }} else {{\n\
         \x20       for (uint e = 0u; e < 8u; e++) {{ uint c = {col}; {narrow} }}\n\
         \x20     }}\n"
    )
}

/// `bool xw`: whether [`gemv_x`] may read the row at `xr` (and the norm weight) as 16-byte words.
fn gemv_x_aligned(norm: bool) -> &'static str {
    if norm {
        "  bool xw = ((xr | pc.base[1]) & 3u) == 0u;\n"
    } else {
        "  bool xw = (xr & 3u) == 0u;\n"
    }
}

/// A matmul kernel's start: its header with the extensions it takes (integer dot products, else subgroup
/// shuffles, else cooperative matrices, else none), the operand `x` (binding 0), `K` and `TILE`.
fn matmul_prologue(s: &mut String, k: u64, dot: bool, sg: bool, coop: bool) {
    let extensions: &[&str] = if dot {
        &DOT_EXTENSIONS
    } else if sg {
        &SUBGROUP_EXTENSIONS
    } else if coop {
        &COOP_EXTENSIONS
    } else {
        &[]
    };
    header_with(s, MATMUL_THREADS, 1, extensions);
    f32_buffer(s, 0, "x", "readonly");
    def_uint(s, "K", k);
    def_uint(s, "TILE", MATMUL_TILE as u64);
}

/// The subgroup extensions of the row-by-row path's reduction ([`MatPath::RowByRowSg`]).
const SUBGROUP_EXTENSIONS: [&str; 2] = ["GL_KHR_shader_subgroup_basic", "GL_KHR_shader_subgroup_shuffle"];

/// The end of a row-by-row step: each thread's `sums` partial sums in `part[]` added up over its group's
/// `LANES` threads, for [`gemv_sum`] to read. Returns (the thread's index in the workgroup, the reduction).
///
/// Through shared memory, the groups' sums meet in a tree of `log2(LANES)` barriers. With subgroups, a
/// butterfly of shuffles adds each subgroup's share of a group (`min(LANES, subgroup size)` threads, a power
/// of two that divides `LANES`, so a share never spans two groups) and one barrier leaves the shares for
/// `gsum` to add; the thread index counts subgroup by subgroup, so the shares are whole subgroups whatever
/// order the device numbers its invocations in.
fn gemv_reduce(sums: u32, subgroups: bool) -> (&'static str, String) {
    if subgroups {
        (
            "gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID",
            format!(
                "uint span = min(LANES, gl_SubgroupSize);\n\
                 \x20 // The sums innermost, a loop of constant trip count the compiler unrolls: part[] stays in registers.\n\
                 \x20 for (uint h = 1u; h < span; h <<= 1u) for (uint r = 0u; r < {sums}u; r++) part[r] += subgroupShuffleXor(part[r], h);\n\
                 \x20 if (l % span == 0u) for (uint r = 0u; r < {sums}u; r++) gpart[at + r * (LANES / span) + l / span] = part[r];\n\
                 \x20 barrier();\n"
            ),
        )
    } else {
        (
            "gl_LocalInvocationID.x",
            format!(
                "for (uint r = 0u; r < {sums}u; r++) gpart[at + r * LANES + l] = part[r];\n\
                 \x20 barrier();\n\
                 \x20 for (uint h = LANES / 2u; h > 0u; h /= 2u) {{\n\
                 \x20   if (l < h) for (uint r = 0u; r < {sums}u; r++) gpart[at + r * LANES + l] += gpart[at + r * LANES + l + h];\n\
                 \x20   barrier();\n\
                 \x20 }}\n"
            ),
        )
    }
}

/// `float gsum(uint at, uint r)`: total `r` of the group whose shared scratch starts at `at` (`sums * LANES`
/// floats of `gpart`), after [`gemv_reduce`].
fn gemv_sum(subgroups: bool) -> &'static str {
    if subgroups {
        "float gsum(uint at, uint r) {\n\
         \x20 uint shares = LANES / min(LANES, gl_SubgroupSize);\n\
         \x20 float v = 0.0;\n\
         \x20 for (uint c = 0u; c < shares; c++) v += gpart[at + r * shares + c];\n\
         \x20 return v;\n\
         }\n"
    } else {
        "float gsum(uint at, uint r) { return gpart[at + r * LANES]; }\n"
    }
}

/// One matrix of a matmul launch: its format, whether it has a bias, its rows (outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMember {
    pub format: WeightFormat,
    pub bias: bool,
    pub n: u64,
}

/// An RMSNorm over whole rows fused in front of a matmul launch: `x` is normalized as it is read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormPrologue {
    pub eps: f32,
    pub unit_offset: bool,
}

/// `matmul_<format>[_bias]`: `y = x W^T (+ b)`, W `N x K`; [`matmul_group`] of one matrix.
pub fn matmul(format: WeightFormat, bias: bool, k: u64, n: u64, path: MatPath) -> String {
    matmul_group(&[MatMember { format, bias, n }], k, None, false, path)
}

/// How a matmul kernel walks its rows of `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatPath {
    /// Tiles of 64 outputs by 64 rows through shared memory, each dequantized weight block multiplied into all
    /// the rows (prefill).
    Tiled,
    /// [`MatPath::Tiled`] multiplied by cooperative matrices, in tiles of [`COOP_TILE_ROWS`] rows (f16
    /// operands, f32 sums: needs [`unicorn_ir::device::COOPMAT_F16_F32`] and [`COOP_SHARED_BYTES`] of shared
    /// memory).
    TiledCoop,
    /// Row after row, each weight step multiplied into one row (decode, where a launch has a row per sequence):
    /// a row's arithmetic is then the same however many sequences the launch holds. Matrices whose columns
    /// are no multiple of eight take the tiled path anyway.
    RowByRow,
    /// [`MatPath::RowByRow`] with each group's sums added by subgroup shuffles (needs
    /// [`unicorn_ir::device::Feature::SubgroupShuffle`]).
    RowByRowSg,
    /// [`MatPath::RowByRowSg`] with quantized weights multiplied by packed int8 dot products: each workgroup
    /// first quantizes its row of `x` to int8 blocks of 32 in shared memory, as the CPU's q8_0 / q4_0 matmuls
    /// quantize their activations (needs [`unicorn_ir::device::Feature::IntegerDot`] and [`DOT_SHARED_BYTES`]
    /// of shared memory; matrices of float weights, and rows too long for the staging, keep the float path).
    RowByRowDot,
}

/// Shared memory the integer-dot path may use: the staged row of `x` beside the reductions' scratch (32 KiB:
/// lavapipe's limit, and at most what GPUs with integer dot products give a workgroup).
pub const DOT_SHARED_BYTES: u32 = 32768;

/// Shared bytes of an integer-dot kernel over `k` columns with `sums` sums per thread: the staged row (a byte
/// per column, a scale per block of 32), its sum of squares' per-subgroup partials, and the reduction scratch.
fn dot_shared_bytes(k: u64, sums: u32) -> u64 {
    k + 4 * (k / 32) + 4 * 64 + 4 * sums as u64 * MATMUL_THREADS as u64
}

/// Whether a row-by-row launch of these members over `k` columns takes the integer-dot path.
fn takes_dot(members: &[MatMember], k: u64, sums: u32, path: MatPath) -> bool {
    path == MatPath::RowByRowDot
        && k.is_multiple_of(32)
        && members.iter().all(|m| m.format.is_quantized())
        && dot_shared_bytes(k, sums) <= DOT_SHARED_BYTES as u64
}

/// The kernel a matmul launch of `members` over `K = k` on `path` takes: the one decision that
/// [`matmul_group`] and [`matmul_glu`] generate by and [`matmul_family`] names. `glu`: the launch has the GLU
/// fused behind it (two matrices' sums a thread, so the integer-dot staging has less shared memory left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatKernel {
    /// Row by row (decode): on integer dot products against a staged row (`dot`), with subgroup reductions
    /// (`sg`: on the integer-dot path too), or neither.
    Gemv { dot: bool, sg: bool },
    /// Tiled (prefill), on cooperative matrices where `coop`.
    Gemm { coop: bool },
}

fn mat_kernel(members: &[MatMember], k: u64, path: MatPath, glu: bool) -> MatKernel {
    if takes_rows(k, path) {
        MatKernel::Gemv {
            dot: takes_dot(members, k, if glu { 17 } else { 9 }, path),
            sg: matches!(path, MatPath::RowByRowSg | MatPath::RowByRowDot),
        }
    } else {
        MatKernel::Gemm { coop: takes_coop(members, k, path) }
    }
}

/// The kernel family of a matmul launch of `members` over `K = k` on `path`, and its variant, for the kernel's
/// name: `gemv` row by row (decode) — `_dot` on integer dot products, `_sg` with subgroup reductions — or
/// `gemm` tiled (prefill) — `_coop` on cooperative matrices. `glu`: the launch has the GLU fused behind it.
pub fn matmul_family(members: &[MatMember], k: u64, path: MatPath, glu: bool) -> (&'static str, &'static str) {
    match mat_kernel(members, k, path, glu) {
        MatKernel::Gemv { dot: true, .. } => ("gemv", "_dot"),
        MatKernel::Gemv { sg: true, .. } => ("gemv", "_sg"),
        MatKernel::Gemv { .. } => ("gemv", ""),
        MatKernel::Gemm { coop } => ("gemm", if coop { "_coop" } else { "" }),
    }
}

/// The extensions of the integer-dot path: subgroup shuffles (its reductions and the staging's block maxima)
/// and the dot products.
const DOT_EXTENSIONS: [&str; 3] =
    ["GL_KHR_shader_subgroup_basic", "GL_KHR_shader_subgroup_shuffle", "GL_EXT_integer_dot_product"];

/// The integer-dot path's staging of a row of `x` ([`MatPath::RowByRowDot`]): `float stage_x(uint xr, uint t)`
/// quantizes the row at word `xr` (times the fused norm's weight, with `norm`) to int8 blocks of 32 — `amax` =
/// the block's largest magnitude, `q = roundEven(v * 127 / amax)`, scale `amax / 127`, as the CPU's q8_0
/// activations — into `xq` (four quants a word) and `xd`, thread `t` taking eight columns at a time (four
/// threads a block, their maxima met by shuffles), and returns the row's sum of squares (0 without `norm`)
/// after the barrier that makes the staging visible.
fn dot_stage(norm: bool) -> String {
    let (scale, square) = if norm { (" * (g[pc.base[1] + c + e] + UNIT)", " ss += xe * xe;") } else { ("", "") };
    format!(
        "shared uint xq[K / 4u];\n\
         shared float xd[K / 32u];\n\
         shared float xss[64];\n\
         float stage_x(uint xr, uint t) {{\n\
         \x20 float ss = 0.0;\n\
         \x20 for (uint c = 8u * t; c < K; c += 8u * {threads}u) {{\n\
         \x20   float v[8], amax = 0.0;\n\
         \x20   for (uint e = 0u; e < 8u; e++) {{ float xe = x[xr + c + e];{square} v[e] = xe{scale}; amax = max(amax, abs(v[e])); }}\n\
         \x20   amax = max(amax, subgroupShuffleXor(amax, 1u));\n\
         \x20   amax = max(amax, subgroupShuffleXor(amax, 2u));\n\
         \x20   float id = amax != 0.0 ? 127.0 / amax : 0.0;\n\
         \x20   uint w0 = 0u, w1 = 0u;\n\
         \x20   for (uint e = 0u; e < 4u; e++) {{\n\
         \x20     w0 |= (uint(int(roundEven(v[e] * id))) & 0xffu) << (8u * e);\n\
         \x20     w1 |= (uint(int(roundEven(v[4u + e] * id))) & 0xffu) << (8u * e);\n\
         \x20   }}\n\
         \x20   xq[c / 4u] = w0;\n\
         \x20   xq[c / 4u + 1u] = w1;\n\
         \x20   if (c % 32u == 0u) xd[c / 32u] = amax / 127.0;\n\
         \x20 }}\n\
         \x20 for (uint h = 1u; h < gl_SubgroupSize; h <<= 1u) ss += subgroupShuffleXor(ss, h);\n\
         \x20 if (gl_SubgroupInvocationID == 0u) xss[gl_SubgroupID] = ss;\n\
         \x20 barrier();\n\
         \x20 float total = 0.0;\n\
         \x20 for (uint i = 0u; i < gl_NumSubgroups; i++) total += xss[i];\n\
         \x20 return total;\n\
         }}\n",
        threads = MATMUL_THREADS
    )
}

/// `void gemv_dot_mul(uint i, uvec4 wv[NW], inout float acc[8])`: [`gemv_mul`] of a quantized matrix against
/// the staged row ([`dot_stage`]): the same weight words, each row's quants multiplied by the staged quants
/// four at a time (`dotPacked4x8EXT`), the integer sum scaled by the row's and the block's scales. q4_0's
/// nibbles enter unsigned and `8 * sum(x quants)` comes off the sum, exactly as on the CPU.
fn gemv_dot_mul(out: &mut String, format: WeightFormat) {
    let row_scale = "vec2 d2 = unpackHalf2x16(wv[0][r / 2u]); float d = (r & 1u) == 0u ? d2.x : d2.y;";
    let body = match format {
        WeightFormat::Q4_0 => format!(
            "float dx = xd[i / 4u];\n\
             \x20 // Columns 4c..4c + 4 (the low nibbles) and 16 + 4c.. (the high ones) of block i / 4.\n\
             \x20 uint xb = (i / 4u) * 8u + i % 4u;\n\
             \x20 int xl = int(xq[xb]), xh = int(xq[xb + 4u]);\n\
             \x20 int xs = dotPacked4x8EXT(0x01010101, xl) + dotPacked4x8EXT(0x01010101, xh);\n\
             \x20 for (uint r = 0u; r < 8u; r++) {{\n\
             \x20   {row_scale}\n\
             \x20   uint word = r < 4u ? wv[1][r] : wv[2][r - 4u];\n\
             \x20   int q = dotPacked4x8EXT(int(word & 0x0f0f0f0fu), xl) + dotPacked4x8EXT(int((word >> 4) & 0x0f0f0f0fu), xh) - 8 * xs;\n\
             \x20   acc[r] += float(q) * (d * dx);\n\
             \x20 }}\n"
        ),
        WeightFormat::Q8_0 => format!(
            "float dx = xd[i / 4u];\n\
             \x20 // Columns 8i..8i + 8.\n\
             \x20 int x0 = int(xq[2u * i]), x1 = int(xq[2u * i + 1u]);\n\
             \x20 for (uint r = 0u; r < 8u; r++) {{\n\
             \x20   {row_scale}\n\
             \x20   int qa = int(r < 4u ? wv[1][r] : wv[2][r - 4u]), qb = int(r < 4u ? wv[3][r] : wv[4][r - 4u]);\n\
             \x20   int q = dotPacked4x8EXT(qa, x0) + dotPacked4x8EXT(qb, x1);\n\
             \x20   acc[r] += float(q) * (d * dx);\n\
             \x20 }}\n"
        ),
        _ => unreachable!("the integer-dot path takes quantized weights"),
    };
    let (nw, f) = (gemv_words(format), format.name());
    let _ = write!(out, "void gemv_dot_mul_{f}(uint i, uvec4 wv[{nw}], inout float acc[8]) {{\n\x20 {body}}}\n");
}

impl MatPath {
    fn rows_one_by_one(self) -> bool {
        matches!(self, MatPath::RowByRow | MatPath::RowByRowSg | MatPath::RowByRowDot)
    }

    /// The device features the path's kernels need.
    pub fn requires(self) -> Vec<Feature> {
        match self {
            MatPath::RowByRowSg => vec![Feature::SubgroupShuffle],
            MatPath::RowByRowDot => {
                vec![Feature::SubgroupShuffle, Feature::IntegerDot, Feature::SharedMemory(DOT_SHARED_BYTES)]
            }
            MatPath::TiledCoop => {
                vec![Feature::CooperativeMatrix(COOPMAT_F16_F32.into()), Feature::SharedMemory(COOP_SHARED_BYTES)]
            }
            MatPath::Tiled | MatPath::RowByRow => Vec::new(),
        }
    }
}

/// Outputs (and rows of `x`) of one tile of the tiled path.
pub const GEMM_TILE: u64 = 64;

/// A matmul launch's workgroups: along x, each member's tiles of outputs one after the other (64 for the tiled
/// path, `8 * gemv_groups` for the row-by-row path); along y, tiles of this many rows of `x`: 64 for the
/// tiled path, [`COOP_TILE_ROWS`] for its cooperative-matrix form, 8 (one after another) for the row-by-row
/// path.
pub fn matmul_work(members: &[MatMember], k: u64, path: MatPath) -> (u64, u64) {
    let (outs, rows) = if takes_rows(k, path) {
        (8 * gemv_groups(members), MATMUL_TILE as u64)
    } else if takes_coop(members, k, path) {
        (coop_outs(members), COOP_TILE_ROWS)
    } else {
        (GEMM_TILE, GEMM_TILE)
    };
    (members.iter().map(|m| m.n.div_ceil(outs)).sum(), rows)
}

/// Whether a tiled launch multiplies by cooperative matrices: on that path, unless a matrix holds f32 weights
/// (an f32 plan is the reference the others are judged by, so it keeps f32 products).
fn takes_coop(members: &[MatMember], k: u64, path: MatPath) -> bool {
    path == MatPath::TiledCoop && !takes_rows(k, path) && members.iter().all(|m| m.format != WeightFormat::F32)
}

/// Interleaved groups of 8 outputs one workgroup of the row-by-row path makes: as many as keep at least 256
/// workgroups in the launch (a launch of few outputs needs every workgroup it can get to fill a large GPU; one
/// of many outputs amortizes each workgroup's fixed cost over more), at most 8.
pub fn gemv_groups(members: &[MatMember]) -> u64 {
    let n: u64 = members.iter().map(|m| m.n).sum();
    let mut g = 8;
    while g > 1 && n / (8 * g) < 256 {
        g /= 2;
    }
    g
}

fn takes_rows(k: u64, path: MatPath) -> bool {
    path.rows_one_by_one() && has_gemv(k)
}

/// The tiled paths' weight loader in two halves, so that a block's loads are in flight while the previous
/// block is multiplied: `void wload(uint n0, uint kb, out uint raw[8])` reads block `kb` (columns
/// `32kb..32kb + 32`) of outputs `n0..n0 + 64` of the matrix bound as `w` (binding `arg`) as raw words, and
/// `void wstore(uint n0, uint oo, uint raw[8])` dequantizes them into `ws` through the kernel's `WS(col, value)`,
/// column-major (`ws[col * stride + output]`, output `oo + t / 4`: f32 with a stride of 65 in the portable
/// GEMM, f16 with `WSTR` in the cooperative-matrix one, whose tiles of 128 outputs store two halves of 64),
/// zero past `N` and `K`. Thread `t` takes output `t / 4` and a quarter of the
/// block: a quant word of the row and its scale's word (q4_0: columns `4c..4c + 4` and `16 + 4c..`), two
/// (q8_0: eight neighbouring columns), or eight values (four words of f16 / bf16 pairs where `K` is a
/// multiple of eight; otherwise element by element).
fn gemm_w_loader(out: &mut String, format: WeightFormat, arg: usize, k: u64) {
    let b = format!("pc.base[{arg}]");
    let qat = format!("uint at = {b} + ((n / 8u) * (K / 32u) + kb) * {}u, r = n % 8u;", quant_words(format));
    let scale = "uint r = n % 8u; vec2 d2 = unpackHalf2x16(raw[7]); float d = (r & 1u) == 0u ? d2.x : d2.y;";
    let (load, store) = match format {
        WeightFormat::Q4_0 => (
            format!("{qat} raw[0] = w[at + 4u + part * 8u + r]; raw[7] = w[at + r / 2u];"),
            format!(
                "{scale}\n\
                 \x20 for (uint e = 0u; e < 4u; e++) {{\n\
                 \x20   uint byte = (raw[0] >> (e * 8u)) & 0xffu;\n\
                 \x20   WS(part * 4u + e, float(int(byte & 15u) - 8) * d);\n\
                 \x20   WS(16u + part * 4u + e, float(int(byte >> 4) - 8) * d);\n\
                 \x20 }}"
            ),
        ),
        WeightFormat::Q8_0 => (
            format!(
                "{qat} raw[0] = w[at + 4u + part * 16u + r]; raw[1] = w[at + 12u + part * 16u + r]; \
                 raw[7] = w[at + r / 2u];"
            ),
            format!(
                "{scale}\n\
                 \x20 for (uint e = 0u; e < 4u; e++) {{\n\
                 \x20   WS(part * 8u + e, float(bitfieldExtract(int(raw[0]), int(e * 8u), 8)) * d);\n\
                 \x20   WS(part * 8u + 4u + e, float(bitfieldExtract(int(raw[1]), int(e * 8u), 8)) * d);\n\
                 \x20 }}"
            ),
        ),
        WeightFormat::F32 => (
            format!(
                "uint c0 = kb * 32u + part * 8u; \
                 for (uint e = 0u; e < 8u; e++) raw[e] = c0 + e < K ? w[{b} + n * K + c0 + e] : 0u;"
            ),
            "for (uint e = 0u; e < 8u; e++) WS(part * 8u + e, uintBitsToFloat(raw[e]));".to_string(),
        ),
        WeightFormat::F16 | WeightFormat::Bf16 if k.is_multiple_of(8) => {
            let pair = if format == WeightFormat::F16 {
                "vec2 h = unpackHalf2x16(raw[j]);"
            } else {
                "vec2 h = vec2(uintBitsToFloat(raw[j] << 16), uintBitsToFloat(raw[j] & 0xffff0000u));"
            };
            (
                format!(
                    "uint c0 = kb * 32u + part * 8u; \
                     for (uint j = 0u; j < 4u; j++) raw[j] = c0 < K ? w[{b} + (n * K + c0) / 2u + j] : 0u;"
                ),
                format!("for (uint j = 0u; j < 4u; j++) {{ {pair} WS(part * 8u + 2u * j, h.x); WS(part * 8u + 2u * j + 1u, h.y); }}"),
            )
        }
        WeightFormat::F16 | WeightFormat::Bf16 => (
            "for (uint e = 0u; e < 8u; e++) {\n\
             \x20   uint c = kb * 32u + part * 8u + e;\n\
             \x20   raw[e] = floatBitsToUint(c < K ? w_elem(n, c) : 0.0);\n\
             \x20 }"
                .to_string(),
            "for (uint e = 0u; e < 8u; e++) WS(part * 8u + e, uintBitsToFloat(raw[e]));".to_string(),
        ),
    };
    let _ = write!(
        out,
        "void wload(uint n0, uint kb, out uint raw[8]) {{\n\
         \x20 uint t = gl_LocalInvocationID.x, part = t % 4u, n = n0 + t / 4u;\n\
         \x20 for (uint e = 0u; e < 8u; e++) raw[e] = 0u;\n\
         \x20 if (n < N_ROWS) {{ {load} }}\n\
         }}\n\
         void wstore(uint n0, uint oo, uint raw[8]) {{\n\
         \x20 uint t = gl_LocalInvocationID.x, o = oo + t / 4u, part = t % 4u, n = n0 + t / 4u;\n\
         \x20 {store}\n\
         }}\n"
    );
}

/// Rows of `x` one tile of the cooperative-matrix GEMM takes (by [`coop_outs`] outputs): each dequantized weight
/// serves twice the rows of the portable tile.
pub const COOP_TILE_ROWS: u64 = 128;

/// Outputs of a launch (all members together) from which the cooperative-matrix GEMM takes tiles of 128 outputs
/// rather than 64: at 128 rows by 128 outputs a 512-row prefill still makes 192 workgroups or more, enough to
/// fill a large GPU, and each subgroup multiplies 32 x 64 blocks (six fragment loads per eight products, where
/// a 32 x 32 block takes four per four).
pub const COOP_WIDE_OUTPUTS: u64 = 6144;

/// Outputs of one cooperative-matrix tile for a launch of these members: 128 from [`COOP_WIDE_OUTPUTS`] on,
/// else 64.
pub fn coop_outs(members: &[MatMember]) -> u64 {
    if members.iter().map(|m| m.n).sum::<u64>() >= COOP_WIDE_OUTPUTS {
        128
    } else {
        64
    }
}

/// The extensions of the cooperative-matrix GEMM ([`MatPath::TiledCoop`]).
const COOP_EXTENSIONS: [&str; 4] = [
    "GL_KHR_cooperative_matrix",
    "GL_KHR_memory_scope_semantics",
    "GL_EXT_shader_explicit_arithmetic_types_float16",
    "GL_KHR_shader_subgroup_basic",
];

/// Floats of the cooperative-matrix GEMM's result staging (`cs`).
const COOP_CS_FLOATS: u64 = 3328;

/// Shared memory of the cooperative-matrix GEMM, 32 KiB in all: the f16 tiles of `x` (128 rows x 32 columns,
/// row-major, stride 40) and of the weights (32 columns x up to 128 outputs, stride `WSTR`, 72 or 136: every
/// row of both starts on a 16-byte boundary, as cooperative-matrix loads want, and neighbouring rows fall in
/// different banks), the f32 results of a part of the tile at a time for the epilogue (`cs`, also the
/// scratch of the norm's row sums), and the rows' sums of squares.
const COOP_SHARED: &str = "shared float16_t xs[128 * 40];\n\
                           shared float16_t ws[32 * 136];\n\
                           shared float cs[3328];\n\
                           shared float rs[128];\n\
                           #define WS(c, v) ws[(c) * WSTR + o] = float16_t(v)\n";

/// Bytes of [`COOP_SHARED`].
pub const COOP_SHARED_BYTES: u32 = (128 * 40 + 32 * 136) * 2 + (COOP_CS_FLOATS as u32 + 128) * 4;
const _: () = assert!(COOP_SHARED_BYTES == 32768);

/// The norm's partial sums of squares, half of a block's 32 columns at a time (16 columns of a tile's rows, at
/// a stride of rows + 1), fit the scratch they borrow: `cs` for the cooperative-matrix GEMM, `xs` (32 x 65)
/// for the portable one.
const _: () = assert!(16 * (COOP_TILE_ROWS + 1) <= COOP_CS_FLOATS && 16 * (GEMM_TILE + 1) <= 32 * 65);

/// 32-row blocks of a cooperative-matrix tile one subgroup multiplies, at most: the tile's eight over the
/// workgroup's subgroups (with subgroups of up to 64 invocations, at least four of them); with more subgroups
/// than blocks, the later subgroups only stage.
const COOP_BLOCKS: u32 = 2;

/// The cooperative-matrix tile's geometry for tiles of `outs` outputs (64 or 128): the outputs of one block
/// (a tile is 4 x 2 blocks of 32 rows by `outs / 2` outputs), the stride of `ws` and of `cs`, and the rows of
/// one part of the epilogue (whole 16-row fragments whose results fit `cs`).
fn coop_geometry(outs: u64) -> (u64, u64, u64, u64) {
    let bw = outs / 2;
    let cstr = outs + 4;
    let part = 16 * (COOP_CS_FLOATS / (16 * cstr));
    (bw, outs + 8, cstr, part)
}

/// Member `m` of a tiled launch: a tile of its `y` (`rows` rows of `x` by `outs` outputs), walking `K` in blocks
/// of 32 columns. Each block of the rows of `x` (scaled by the norm weight where a norm is fused, its squares
/// summed on the way) and of the outputs' dequantized weights goes to shared memory, and the next block's
/// loads are issued before this one is multiplied, so they are in flight meanwhile; thread `t` stages row
/// `t / (256 / rows)` of `x`, `32 * rows / 256` of its columns. The portable path (64 x 64) multiplies in
/// f32, each thread its `4 x 4` outputs (rows `t / 16 + 16i`, outputs `t % 16 + 16j`); the cooperative-matrix
/// path (128 rows by [`coop_outs`]) stores the blocks in f16 and multiplies the tile as eight blocks of 32 rows
/// by `outs / 2` outputs, each `2 x outs / 32` accumulators of `16 x 16` in f32 by `coopMatMulAdd` (block `b`,
/// rows `32 (b / 2)`, outputs `outs / 2 (b % 2)`, is subgroup `b % subgroups`' block `b / subgroups`: two A
/// loads and `outs / 32` B loads serve its products), staged through shared memory (`cs`, a part of the tile's
/// rows at a time) for the same epilogue: `store`, with `row`, `n`, `inv` (the row's `1 / rms`, or 1), and
/// `acc[i][j]` or `cs[rr * CSTR + oc]`.
///
/// With `glu` (member 0 is the gate matrix, member 1 the up matrix, of one shape), a tile's first half of
/// outputs are gate's `n0..n0 + outs / 2` and its second half up's same outputs, so a thread of the epilogue
/// finds both projections of an output in the tile: `store` then sees the gate's sum in `acc[i][j]` or
/// `cs[rr * CSTR + oc]` and the up's in `acc[i][j + 2u]` or `cs[rr * CSTR + HALF + oc]`, for `n` below
/// `n0 + outs / 2`.
fn tiled_member(m: usize, norm: bool, coop: Option<u64>, store: &str, glu: bool) -> String {
    let rows: u32 = if coop.is_some() { COOP_TILE_ROWS as u32 } else { GEMM_TILE as u32 };
    let outs = coop.unwrap_or(GEMM_TILE);
    let wide = outs > 64;
    assert!(!glu || m == 0, "a GLU tile is members 0 and 1 together");
    // Outputs of the tile's epilogue: with the GLU, the half of the tile's columns it writes.
    let cols = if glu { outs / 2 } else { outs };
    // Values of x each thread stages per block: thread t's e-th is row 8e + t / 32, column t % 32, so that a
    // subgroup's load reads 32 neighbouring columns of one row.
    let xe = rows / 8;
    let inv = |rq: &str| if norm { format!("float(1.0 / sqrt(rs[{rq}] / float(K) + EPS))") } else { "1.0".to_string() };
    let (gload, gdecl, scaled) = if norm {
        (
            " gv = c < K ? g[pc.base[1] + c] : 0.0;",
            format!(" float gv, ss[{xe}];\n\x20 for (uint e = 0u; e < {xe}u; e++) ss[e] = 0.0;"),
            " ss[e] += v * v; v *= gv + UNIT;",
        )
    } else {
        ("", String::new(), "")
    };
    let xload = |kb: &str| {
        format!(
            "{{ uint c = {kb} * 32u + col;{gload}\n\
             \x20   for (uint e = 0u; e < {xe}u; e++) {{ uint row = row0 + 8u * e + sub; \
             xv[e] = row < pc.rows && c < K ? x[pc.base[0] + row * K + c] : 0.0; }} }}\n"
        )
    };
    // With a norm, each row's sum of squares: the 32 threads of its columns meet in `scr` (free after the
    // products), half of the columns at a time, column-major with an odd stride so that neither the stores nor
    // the reads meet in a bank; one thread per row then adds them in column order, the same order wherever the
    // row sits in the tile (a row's result must not depend on the rows launched with it: a batched sequence
    // gets the bits it gets alone).
    let (scr, stride) = if coop.is_some() { ("cs", COOP_TILE_ROWS + 1) } else { ("xs", GEMM_TILE + 1) };
    let row_sums = if norm {
        format!(
            "float rsum = 0.0;\n\
             \x20 for (uint half_ = 0u; half_ < 2u; half_++) {{\n\
             \x20   if (col / 16u == half_) for (uint e = 0u; e < {xe}u; e++) {scr}[(col % 16u) * {stride}u + 8u * e + sub] = ss[e];\n\
             \x20   barrier();\n\
             \x20   if (t < {rows}u) for (uint j = 0u; j < 16u; j++) rsum += {scr}[j * {stride}u + t];\n\
             \x20   barrier();\n\
             \x20 }}\n\
             \x20 if (t < {rows}u) rs[t] = rsum;\n\
             \x20 barrier();\n"
        )
    } else {
        String::new()
    };
    let acc_ty = "coopmat<float, gl_ScopeSubgroup, 16, 16, gl_MatrixUseAccumulator>";
    let (decl, xs_store, multiply, epilogue) = if coop.is_some() {
        let (bw, _, _, part) = coop_geometry(outs);
        let nb = bw / 16;
        // Every accumulator a variable of its own and every block's code spelled out: an array of cooperative
        // matrices indexed in a loop the compiler does not unroll lives in local memory, and each product
        // then loads and stores its accumulator there.
        let blocks = 0..COOP_BLOCKS;
        let frags = |i: u32| (0..2).flat_map(move |a| (0..nb).map(move |q| format!("acc{i}_{a}_{q}")));
        let decl = blocks
            .clone()
            .map(|i| {
                let names: Vec<String> = frags(i).collect();
                format!(
                    "{acc_ty} {};\n",
                    names.iter().map(|n| format!("{n} = {acc_ty}(0.0)")).collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\x20 ");
        let decl = format!(
            "// This subgroup's blocks (rows 32 (b / 2), outputs BW (b % 2)); past the tile's eight, none.\n\
             \x20 uint blk0 = gl_SubgroupID{};\n\
             \x20 {decl}",
            blocks
                .clone()
                .skip(1)
                .map(|i| format!(", blk{i} = gl_SubgroupID + {i}u * gl_NumSubgroups"))
                .collect::<String>()
        );
        let b_decl = (0..nb).map(|q| format!("mb{q}")).collect::<Vec<_>>().join(", ");
        let multiply = blocks
            .clone()
            .map(|i| {
                let b_loads: String = (0..nb)
                    .map(|q| {
                        format!(
                            "\x20       coopMatLoad(mb{q}, ws, kk * WSTR + bc + {}u, WSTR, gl_CooperativeMatrixLayoutRowMajor);\n",
                            16 * q
                        )
                    })
                    .collect();
                let products: String = (0..2)
                    .flat_map(|a| (0..nb).map(move |q| (a, q)))
                    .map(|(a, q)| format!("\x20       acc{i}_{a}_{q} = coopMatMulAdd(ma{a}, mb{q}, acc{i}_{a}_{q});\n"))
                    .collect();
                format!(
                    "if (blk{i} < 8u) {{\n\
                     \x20     uint br = (blk{i} / 2u) * 32u, bc = (blk{i} % 2u) * BW;\n\
                     \x20     for (uint kk = 0u; kk < 32u; kk += 16u) {{\n\
                     \x20       coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseA> ma0, ma1;\n\
                     \x20       coopmat<float16_t, gl_ScopeSubgroup, 16, 16, gl_MatrixUseB> {b_decl};\n\
                     \x20       coopMatLoad(ma0, xs, br * 40u + kk, 40u, gl_CooperativeMatrixLayoutRowMajor);\n\
                     \x20       coopMatLoad(ma1, xs, (br + 16u) * 40u + kk, 40u, gl_CooperativeMatrixLayoutRowMajor);\n\
                     {b_loads}{products}\
                     \x20     }}\n\
                     \x20   }}\n"
                )
            })
            .collect::<Vec<_>>()
            .join("\x20   ");
        // Each block's fragments of the part's rows into cs: fragment (a, q) holds rows br + 16a.., outputs
        // bc + 16q...
        let stores = blocks
            .map(|i| {
                let one = |a: u64, q: u64| {
                    format!(
                        "\x20     if ((br + {r}u) / PART == hh) coopMatStore(acc{i}_{a}_{q}, cs, ((br + {r}u) % PART) * CSTR + bc + {c}u, CSTR, gl_CooperativeMatrixLayoutRowMajor);\n",
                        r = 16 * a,
                        c = 16 * q
                    )
                };
                let all: String = (0..2).flat_map(|a| (0..nb).map(move |q| (a, q))).map(|(a, q)| one(a, q)).collect();
                format!(
                    "if (blk{i} < 8u) {{\n\
                     \x20     uint br = (blk{i} / 2u) * 32u, bc = (blk{i} % 2u) * BW;\n\
                     {all}\
                     \x20   }}\n"
                )
            })
            .collect::<Vec<_>>()
            .join("\x20   ");
        let per_thread = (part * cols).div_ceil(MATMUL_THREADS as u64);
        (
            decl,
            "xs[(8u * e + sub) * 40u + col] = float16_t(v);".to_string(),
            multiply,
            format!(
                "{row_sums}\
                 \x20 // The tile's results a part of PART rows at a time: each block's accumulators of those rows into\n\
                 \x20 // cs, then the epilogue of the part's rows.\n\
                 \x20 for (uint hh = 0u; hh < (128u + PART - 1u) / PART; hh++) {{\n\
                 \x20   {stores}\
                 \x20   barrier();\n\
                 \x20   uint oc = t % {cols}u, n = n0 + oc;\n\
                 \x20   for (uint i = 0u; i < {per_thread}u; i++) {{\n\
                 \x20     uint rr = t / {cols}u + {step}u * i, rq = hh * PART + rr, row = row0 + rq;\n\
                 \x20     if (rr >= PART || rq >= 128u || row >= pc.rows || n >= N{m}) continue;\n\
                 \x20     float inv = {inv};\n\
                 \x20     {store}\n\
                 \x20   }}\n\
                 \x20   barrier();\n\
                 \x20 }}\n",
                inv = inv("rq"),
                step = MATMUL_THREADS as u64 / cols,
            ),
        )
    } else {
        (
            "float acc[4][4];\n\
             \x20 for (uint i = 0u; i < 4u; i++) for (uint j = 0u; j < 4u; j++) acc[i][j] = 0.0;\n"
                .to_string(),
            "xs[col * 65u + 8u * e + sub] = v;".to_string(),
            "for (uint kk = 0u; kk < 32u; kk++) {\n\
             \x20     float a[4], b[4];\n\
             \x20     for (uint i = 0u; i < 4u; i++) a[i] = xs[kk * 65u + tr + 16u * i];\n\
             \x20     for (uint j = 0u; j < 4u; j++) b[j] = ws[kk * 65u + tc + 16u * j];\n\
             \x20     for (uint i = 0u; i < 4u; i++) for (uint j = 0u; j < 4u; j++) acc[i][j] += a[i] * b[j];\n\
             \x20   }\n"
                .to_string(),
            format!(
                "{row_sums}\
                 \x20 for (uint i = 0u; i < 4u; i++) {{\n\
                 \x20   uint rr = tr + 16u * i, row = row0 + rr;\n\
                 \x20   if (row >= pc.rows) continue;\n\
                 \x20   float inv = {inv};\n\
                 \x20   for (uint j = 0u; j < {js}u; j++) {{\n\
                 \x20     uint n = n0 + tc + 16u * j;\n\
                 \x20     if (n < N{m}) {store}\n\
                 \x20   }}\n\
                 \x20 }}\n",
                inv = inv("rr"),
                js = cols / 16,
            ),
        )
    };
    // A tile of 128 outputs loads and stores its weights in two halves of 64: with the GLU, gate's and up's.
    // A tile of 64 with the GLU takes gate's 32 rows in threads 0-127 and up's in 128-255 (whole subgroups),
    // up's loader offset so that its thread 128 finds row n0.
    let (raw_decl, store_w) = match (wide, glu) {
        (true, false) => {
            ("uint raw[8], raw1[8];", format!("wstore{m}(n0, 0u, raw);\n\x20   wstore{m}(n0 + 64u, 64u, raw1);"))
        }
        (true, true) => ("uint raw[8], raw1[8];", "wstore0(n0, 0u, raw);\n\x20   wstore1(n0, 64u, raw1);".to_string()),
        (false, false) => ("uint raw[8];", format!("wstore{m}(n0, 0u, raw);")),
        (false, true) => {
            ("uint raw[8];", "if (t < 128u) wstore0(n0, 0u, raw); else wstore1(n0 - 32u, 0u, raw);".to_string())
        }
    };
    let load_w = |kb: &str| match (wide, glu) {
        (true, false) => format!("wload{m}(n0, {kb}, raw);\n\x20   wload{m}(n0 + 64u, {kb}, raw1);\n"),
        (true, true) => format!("wload0(n0, {kb}, raw);\n\x20   wload1(n0, {kb}, raw1);\n"),
        (false, false) => format!("wload{m}(n0, {kb}, raw);\n"),
        (false, true) => format!("if (t < 128u) wload0(n0, {kb}, raw); else wload1(n0 - 32u, {kb}, raw);\n"),
    };
    format!(
        "void member{m}(uint tile_x) {{\n\
         \x20 uint t = gl_LocalInvocationID.x, tr = t / 16u, tc = t % 16u, col = t % 32u, sub = t / 32u;\n\
         \x20 uint n0 = tile_x * {cols}u, row0 = gl_WorkGroupID.y * {rows}u;\n\
         \x20 float xv[{xe}];{gdecl}\n\
         \x20 {raw_decl}\n\
         \x20 {decl}\
         \x20 {first}\
         \x20 {first_w}\
         \x20 for (uint kb = 0u; kb < (K + 31u) / 32u; kb++) {{\n\
         \x20   for (uint e = 0u; e < {xe}u; e++) {{ float v = xv[e];{scaled} {xs_store} }}\n\
         \x20   {store_w}\n\
         \x20   barrier();\n\
         \x20   // The next block's loads, in flight while this one is multiplied.\n\
         \x20   if (kb + 1u < (K + 31u) / 32u) {{\n\
         \x20     {next}\
         \x20     {next_w}\
         \x20   }}\n\
         \x20   {multiply}\
         \x20   barrier();\n\
         \x20 }}\n\
         \x20 {epilogue}\
         }}\n",
        first = xload("0u"),
        next = xload("(kb + 1u)"),
        first_w = load_w("0u"),
        next_w = load_w("kb + 1u"),
    )
}

/// `matmul[_group]`: `y_m = x W_m^T (+ b_m)` for each member `m` of the launch (a layer's q/k/v projections,
/// gate and up), all of one operand `x` of `K` columns, so one launch reads `x` for all of them; the
/// workgroups along x are the members' tiles in order ([`matmul_work`]).
///
/// [`MatPath::Tiled`] (prefill): a workgroup of 256 threads makes a `64 x 64` tile of one member's `y`
/// (64 rows of `x` by 64 outputs), walking `K` in blocks of 32 columns: the block of the 64 rows of `x` and
/// the dequantized block of the 64 outputs' weights go to shared memory, and each thread multiplies them into
/// its `4 x 4` outputs (rows `t / 16 + 16i`, outputs `t % 16 + 16j`), so each weight read from memory serves
/// 64 rows and each value of `x` 64 outputs. [`MatPath::TiledCoop`] takes tiles of [`COOP_TILE_ROWS`] rows by
/// 64 outputs and multiplies them by cooperative matrices (see `tiled_member`).
///
/// [`MatPath::RowByRow`] (decode) with `K` a multiple of eight: the workgroup takes its 8 rows one by one, so
/// each row's arithmetic is the same whatever else the launch holds. Its outputs are 1 to 8 interleaved groups
/// ([`gemv_groups`]) of `256 / groups` threads, and each thread takes every `256 / groups`-th step of eight
/// columns, reading those columns of `x` once and one quant word (or eight values) of each of its group's
/// rows, so a group's threads stream its blocks front to back with every step's loads in flight; each
/// group's partial sums then meet in shared memory.
///
/// Bindings [x, then per member w, (bias), y]; `pc.rows` rows of `x`. Work: `[tiles, ceil(rows / tile), 1]`
/// from [`matmul_work`].
///
/// With `norm`, the launch is `y_m = rms_norm(x) W_m^T`, the norm fused in front (its output is never
/// written): bindings [x, norm weight, normed, normed, then the members'] — the launch's units as the plan
/// lists them, of which the kernel reads `x` and the norm weight. Each column of `x` is scaled by its norm
/// weight as it is read and its square summed on the way; `1 / rms` is one factor of a whole row, so it
/// scales the row's sums at the end, and the launch needs no pass over `x` before the products.
///
/// With `residual` (one member, no norm), the launch is the matmul and the residual add behind it: bindings
/// [x, w, (bias), y, y, residual, sum] — the add's operands as the plan lists them, the matmul's result first
/// — and it writes `sum = x W^T (+ b) + residual`, never `y`.
pub fn matmul_group(
    members: &[MatMember],
    k: u64,
    norm: Option<NormPrologue>,
    residual: bool,
    path: MatPath,
) -> String {
    assert!(!residual || (members.len() == 1 && norm.is_none()), "a residual epilogue follows one matmul alone");
    let mut s = String::new();
    let (gemv, dot, sg, coop) = match mat_kernel(members, k, path, false) {
        MatKernel::Gemv { dot, sg } => (true, dot, sg, false),
        MatKernel::Gemm { coop } => (false, false, false, coop),
    };
    matmul_prologue(&mut s, k, dot, sg, coop);
    let groups = gemv_groups(members);
    let tile_n = if gemv {
        8 * groups
    } else if coop {
        coop_outs(members)
    } else {
        GEMM_TILE
    };
    if gemv {
        def_uint(&mut s, "LANES", MATMUL_THREADS as u64 / groups);
        def_uint(&mut s, "OUTS", 8 * groups);
        let _ = writeln!(s, "shared float gpart[{}];", 9 * MATMUL_THREADS);
        s.push_str(gemv_sum(sg));
        if dot {
            def_uint(&mut s, "SHARED_BYTES", dot_shared_bytes(k, 9));
        }
    } else {
        tiled_shared(&mut s, coop.then_some(tile_n));
    }
    let mut binding = norm_bindings(&mut s, norm);
    if dot {
        s.push_str(&dot_stage(norm.is_some()));
    }
    // Reading element c of a row of x at xr: scaled by its norm weight (its square summed) where a norm is
    // fused; and the factor 1 / rms of a row from the sum of its squares (the staging's, on the integer-dot
    // path).
    let gemv_inv = if dot && norm.is_some() {
        " * (1.0 / sqrt(xsum / float(K) + EPS))"
    } else if norm.is_some() {
        " * (1.0 / sqrt(gsum(at, 8u) / float(K) + EPS))"
    } else {
        ""
    };
    if gemv && !dot {
        gemv_x_aliases(&mut s, norm.is_some());
    }
    if gemv {
        gemv_muls(&mut s, members, dot);
    }
    let sums = if norm.is_some() { 9 } else { 8 };
    let mut first_tile = 0;
    let mut dispatch = String::new();
    let (tiles_x, _) = matmul_work(members, k, path);
    for (m, mm) in members.iter().enumerate() {
        let (w, y) = (binding, binding + 1 + mm.bias as usize);
        u32_buffer(&mut s, w, &format!("w{m}"), "readonly");
        if mm.bias {
            f32_buffer(&mut s, w + 1, &format!("b{m}"), "readonly");
        }
        f32_buffer(&mut s, y, &format!("y{m}"), "");
        binding = y + 1;
        let add_bias = if mm.bias { format!(" + b{m}[pc.base[{}] + n]", w + 1) } else { String::new() };
        // Where the results go: y, or with a residual epilogue y + res into sum (bindings y + 2 and y + 3; y + 1
        // is the add's first operand, y itself, which the kernel never writes).
        let store = |at: &str, v: &str| {
            if residual {
                format!("sum[pc.base[{}] + {at}] = {v} + res[pc.base[{}] + {at}];", y + 3, y + 2)
            } else {
                format!("y{m}[pc.base[{y}] + {at}] = {v};")
            }
        };
        if residual {
            f32_buffer(&mut s, y + 1, "unused", "readonly");
            f32_buffer(&mut s, y + 2, "res", "readonly");
            f32_buffer(&mut s, y + 3, "sum", "");
        }
        def_uint(&mut s, &format!("N{m}"), mm.n);
        member_readers(&mut s, m, mm, w, k, gemv);
        if gemv {
            let walk = gemv_walk(&[(m, mm.format, "acc")], k, MATMUL_THREADS as u64 / groups, dot, norm.is_some());
            let gemv_store = store(&format!("j * N{m} + n"), &format!("gsum(at, l){gemv_inv}{add_bias}"));
            let (thread, reduce) = gemv_reduce(sums, sg);
            let _ = write!(
                s,
                "void member{m}(uint tile_x) {{\n\
                 \x20 // OUTS / 8 interleaved groups of outputs, LANES threads each.\n\
                 \x20 uint t = {thread}, l = t % LANES, n0 = tile_x * OUTS + (t / LANES) * 8u, at = (t / LANES) * 9u * LANES;\n\
                 \x20 uint r0 = gl_WorkGroupID.y * TILE;\n\
                 \x20 for (uint j = r0; j < min(r0 + TILE, pc.rows); j++) {{\n\
                 \x20 uint xr = pc.base[0] + j * K;\n\
                 \x20 float acc[8], ss = 0.0;\n\
                 \x20 for (uint r = 0u; r < 8u; r++) acc[r] = 0.0;\n\
                 {walk}\
                 \x20 float part[9];\n\
                 \x20 for (uint r = 0u; r < 8u; r++) part[r] = acc[r];\n\
                 \x20 part[8] = ss;\n\
                 \x20 {reduce}\
                 \x20 uint n = n0 + l;\n\
                 \x20 if (l < 8u && n < N{m}) {gemv_store}\n\
                 \x20 barrier();\n\
                 \x20 }}\n\
                 }}\n",
            );
        } else {
            let sum = if coop { "cs[rr * CSTR + oc]" } else { "acc[i][j]" };
            let gemm_store = store(&format!("row * N{m} + n"), &format!("{sum} * inv{add_bias}"));
            s.push_str(&tiled_member(m, norm.is_some(), coop.then_some(tile_n), &gemm_store, false));
        }
        let tiles = mm.n.div_ceil(tile_n);
        let _ = writeln!(
            dispatch,
            "\x20 {}if (gl_WorkGroupID.x < {}u) member{m}(gl_WorkGroupID.x - {first_tile}u);",
            if m == 0 { "" } else { "else " },
            first_tile + tiles
        );
        first_tile += tiles;
    }
    debug_assert_eq!(first_tile, tiles_x);
    let _ = write!(s, "void main() {{\n{dispatch}}}\n");
    s
}

/// A fused norm's weight binding and constants; the first binding of the matrices (after the norm unit's
/// three buffers and the matmuls' operand, or after the operand alone).
fn norm_bindings(s: &mut String, norm: Option<NormPrologue>) -> usize {
    let Some(nrm) = norm else { return 1 };
    f32_buffer(s, 1, "g", "readonly");
    def_float(s, "EPS", nrm.eps);
    def_float(s, "UNIT", if nrm.unit_offset { 1.0 } else { 0.0 });
    4
}

/// The single-row path's step functions of a launch over `members`: [`gemv_mul`] (or [`gemv_dot_mul`] with
/// `dot`) once for each format among them.
fn gemv_muls(s: &mut String, members: &[MatMember], dot: bool) {
    let mut done: Vec<WeightFormat> = Vec::new();
    for mm in members {
        if !done.contains(&mm.format) {
            done.push(mm.format);
            if dot {
                gemv_dot_mul(s, mm.format);
            } else {
                gemv_mul(s, mm.format);
            }
        }
    }
}

/// The member readers [`matmul_group`] and [`matmul_glu`] generate for matrix `m` bound at `w`: the
/// single-matrix templates' functions that read its binding, renamed for it.
fn member_readers(s: &mut String, m: usize, mm: &MatMember, w: usize, k: u64, gemv: bool) {
    if gemv {
        // The same binding as 16-byte words, for the wide loads of `gemv_load`.
        let _ = writeln!(s, "layout(std430, binding = {w}) readonly buffer B{w}x16 {{ uvec4 w{m}_4[]; }};");
    }
    let mut f = String::new();
    weight_element(&mut f, mm.format, w);
    if gemv {
        gemv_load(&mut f, mm.format, w);
    } else {
        gemm_w_loader(&mut f, mm.format, w, k);
    }
    s.push_str(
        &f.replace("w4[", &format!("w{m}_4["))
            .replace("w[", &format!("w{m}["))
            .replace("w_elem(", &format!("w{m}_elem("))
            .replace("gemv_load(", &format!("gemv_load{m}("))
            .replace("wload(", &format!("wload{m}("))
            .replace("wstore(", &format!("wstore{m}("))
            .replace("N_ROWS", &format!("N{m}")),
    );
}

/// `[rms_norm+]matmul2_<format>+glu_<act>`: `out = act(x G^T) * (x U^T)` for a gate matrix `G` and an up matrix
/// `U` of one shape, the GLU fused behind the two projections so that neither result is written. Row by row
/// (decode), a workgroup makes the same 1-8 interleaved groups of 8 outputs of both ([`gemv_groups`] of one
/// matrix), each thread multiplying its eight columns of `x` into the 16 rows. Tiled (prefill), a tile holds
/// half its outputs from each matrix, the same outputs of both ([`tiled_member`]), and its epilogue writes
/// the GLU of each pair. With `norm`, the norm is folded in as in [`matmul_group`]. Bindings: [(x, norm
/// weight, normed, normed | x), gate w, (bias), gate y, up w, (bias), up y, gate y, up y, out] — the units as
/// the plan lists them, the GLU's operands gate first. Work: [`glu_work`].
pub fn matmul_glu(
    members: [MatMember; 2],
    k: u64,
    norm: Option<NormPrologue>,
    act: Activation,
    path: MatPath,
) -> String {
    assert!(members[0].n == members[1].n, "a fused GLU takes two projections of one shape");
    let MatKernel::Gemv { dot, sg } = mat_kernel(&members, k, path, true) else {
        return tiled_glu(members, k, norm, act, path);
    };
    let mut s = String::new();
    matmul_prologue(&mut s, k, dot, sg, false);
    let groups = gemv_groups(&members[..1]);
    def_uint(&mut s, "LANES", MATMUL_THREADS as u64 / groups);
    def_uint(&mut s, "OUTS", 8 * groups);
    let _ = writeln!(s, "shared float gpart[{}];", 17 * MATMUL_THREADS);
    let (thread, reduce) = gemv_reduce(17, sg);
    s.push_str(gemv_sum(sg));
    let binding = norm_bindings(&mut s, norm);
    if dot {
        def_uint(&mut s, "SHARED_BYTES", dot_shared_bytes(k, 17));
        s.push_str(&dot_stage(norm.is_some()));
    }
    let (bias, out) = glu_bindings(&mut s, &members, binding, k, true);
    let inv = if dot && norm.is_some() {
        " * (1.0 / sqrt(xsum / float(K) + EPS))"
    } else if norm.is_some() {
        " * (1.0 / sqrt(gsum(at, 16u) / float(K) + EPS))"
    } else {
        ""
    };
    if !dot {
        gemv_x_aliases(&mut s, norm.is_some());
    }
    gemv_muls(&mut s, &members, dot);
    let glu = glu_of(act);
    let (b0, b1) = (&bias[0], &bias[1]);
    let walk = gemv_walk(
        &[(0, members[0].format, "a0"), (1, members[1].format, "a1")],
        k,
        MATMUL_THREADS as u64 / groups,
        dot,
        norm.is_some(),
    );
    let _ = write!(
        s,
        "void main() {{\n\
         \x20 uint t = {thread}, l = t % LANES, n0 = gl_WorkGroupID.x * OUTS + (t / LANES) * 8u, at = (t / LANES) * 17u * LANES;\n\
         \x20 uint r0 = gl_WorkGroupID.y * TILE;\n\
         \x20 for (uint j = r0; j < min(r0 + TILE, pc.rows); j++) {{\n\
         \x20 uint xr = pc.base[0] + j * K;\n\
         \x20 float a0[8], a1[8], ss = 0.0;\n\
         \x20 for (uint r = 0u; r < 8u; r++) {{ a0[r] = 0.0; a1[r] = 0.0; }}\n\
         {walk}\
         \x20 float part[17];\n\
         \x20 for (uint r = 0u; r < 8u; r++) {{ part[r] = a0[r]; part[8u + r] = a1[r]; }}\n\
         \x20 part[16] = ss;\n\
         \x20 {reduce}\
         \x20 uint n = n0 + l;\n\
         \x20 if (l < 8u && n < N0) {{\n\
         \x20   float u = gsum(at, l){inv}{b0}, v = gsum(at, 8u + l){inv}{b1};\n\
         \x20   glu_out[pc.base[{out}] + j * N0 + n] = {glu};\n\
         \x20 }}\n\
         \x20 barrier();\n\
         \x20 }}\n\
         }}\n",
    );
    s
}

/// A fused GLU's bindings from `binding` on: per member its weights, (bias) and result (read by no one: the
/// launch writes neither projection), then the GLU's gate, up and output. Returns each member's bias term of
/// output `n` (or nothing) and the output's binding.
fn glu_bindings(
    s: &mut String,
    members: &[MatMember; 2],
    mut binding: usize,
    k: u64,
    gemv: bool,
) -> ([String; 2], usize) {
    let mut bias = [String::new(), String::new()];
    for (m, mm) in members.iter().enumerate() {
        let (w, y) = (binding, binding + 1 + mm.bias as usize);
        u32_buffer(s, w, &format!("w{m}"), "readonly");
        if mm.bias {
            f32_buffer(s, w + 1, &format!("b{m}"), "readonly");
            bias[m] = format!(" + b{m}[pc.base[{}] + n]", w + 1);
        }
        f32_buffer(s, y, &format!("y{m}"), "readonly");
        binding = y + 1;
        def_uint(s, &format!("N{m}"), mm.n);
        member_readers(s, m, mm, w, k, gemv);
    }
    f32_buffer(s, binding, "ga", "readonly");
    f32_buffer(s, binding + 1, "ua", "readonly");
    f32_buffer(s, binding + 2, "glu_out", "");
    (bias, binding + 2)
}

/// The GLU of gate `u` and up `v`, as the unfused `glu_<act>` kernel computes it.
fn glu_of(act: Activation) -> &'static str {
    match act {
        Activation::Silu => "u / (1.0 + exp(-u)) * v",
        Activation::GeluTanh => "0.5 * u * (1.0 + tanh(0.7978845608028654 * (u + 0.044715 * u * u * u))) * v",
    }
}

/// Workgroups of a fused GLU launch ([`matmul_glu`]): row by row, those of the gate matrix alone; tiled, one
/// tile per half a tile's outputs of the gate matrix (the other half is up's), by the tiles of rows.
pub fn glu_work(members: &[MatMember; 2], k: u64, path: MatPath) -> (u64, u64) {
    if takes_rows(k, path) {
        return matmul_work(&members[..1], k, path);
    }
    let (_, rows) = matmul_work(members, k, path);
    (members[0].n.div_ceil(glu_tile_outs(members, k, path) / 2), rows)
}

/// Outputs of one tile of a tiled fused GLU, both matrices': as the two unfused would take.
fn glu_tile_outs(members: &[MatMember; 2], k: u64, path: MatPath) -> u64 {
    if takes_coop(members, k, path) {
        coop_outs(members)
    } else {
        GEMM_TILE
    }
}

/// The shared memory and its constants of a tiled launch: the cooperative-matrix GEMM's for tiles of `coop`
/// outputs, else the portable GEMM's.
fn tiled_shared(s: &mut String, coop: Option<u64>) {
    if let Some(outs) = coop {
        let (bw, wstr, cstr, part) = coop_geometry(outs);
        for (name, v) in [("BW", bw), ("WSTR", wstr), ("CSTR", cstr), ("PART", part)] {
            def_uint(s, name, v);
        }
        s.push_str(COOP_SHARED);
    } else {
        let _ = writeln!(s, "shared float xs[32 * 65];\nshared float ws[32 * 65];\nshared float rs[64];");
        s.push_str("#define WS(c, v) ws[(c) * 65u + o] = (v)\n");
    }
}

/// The tiled form of [`matmul_glu`].
fn tiled_glu(members: [MatMember; 2], k: u64, norm: Option<NormPrologue>, act: Activation, path: MatPath) -> String {
    let coop = takes_coop(&members, k, path);
    let outs = glu_tile_outs(&members, k, path);
    let mut s = String::new();
    matmul_prologue(&mut s, k, false, false, coop);
    tiled_shared(&mut s, coop.then_some(outs));
    def_uint(&mut s, "HALF", outs / 2);
    let binding = norm_bindings(&mut s, norm);
    let (bias, out) = glu_bindings(&mut s, &members, binding, k, false);
    let (g, u) =
        if coop { ("cs[rr * CSTR + oc]", "cs[rr * CSTR + HALF + oc]") } else { ("acc[i][j]", "acc[i][j + 2u]") };
    let store = format!(
        "{{ float u = {g} * inv{}, v = {u} * inv{}; glu_out[pc.base[{}] + row * N0 + n] = {}; }}",
        bias[0],
        bias[1],
        out,
        glu_of(act)
    );
    s.push_str(&tiled_member(0, norm.is_some(), coop.then_some(outs), &store, true));
    s.push_str("void main() {\n  member0(gl_WorkGroupID.x);\n}\n");
    s
}

/// `rms_norm`: each `G`-element group of a row scaled by `1 / sqrt(mean(x^2) + EPS)` and the weight (or one
/// plus it with `unit_offset`). Bindings [x, w, out]. Work: `[width / G, rows, 1]`, one workgroup per group.
pub fn rms_norm(g: u64, eps: f32, unit_offset: bool) -> String {
    norm_kernel(g, eps, unit_offset, false)
}

/// `rms_norm+add`: [`rms_norm`] of a whole row with the residual add behind it, `sum = res + norm(x)` (the
/// norm's value computed as `rms_norm` computes it, so the sum has the bits of the two launches). Bindings
/// [x, w, y, y, res, sum]: the norm's units then the add's, its result first; `y` is never written. Work as
/// [`rms_norm`]'s.
pub fn rms_norm_add(g: u64, eps: f32, unit_offset: bool) -> String {
    norm_kernel(g, eps, unit_offset, true)
}

fn norm_kernel(g: u64, eps: f32, unit_offset: bool, add: bool) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    f32_buffer(&mut s, 0, "x", "readonly");
    f32_buffer(&mut s, 1, "w", "readonly");
    let store = if add {
        f32_buffer(&mut s, 4, "res", "readonly");
        f32_buffer(&mut s, 5, "sum", "");
        "sum[pc.base[5] + at + i] = res[pc.base[4] + at + i] + x[pc.base[0] + at + i] * inv * g;"
    } else {
        f32_buffer(&mut s, 2, "y", "");
        "y[pc.base[2] + at + i] = x[pc.base[0] + at + i] * inv * g;"
    };
    def_uint(&mut s, "G", g);
    def_float(&mut s, "EPS", eps);
    def_uint(&mut s, "UNIT", unit_offset as u64);
    let _ = write!(
        s,
        "shared float part[{WIDE}];\n\
         void main() {{\n\
         \x20 uint lane = gl_LocalInvocationID.x;\n\
         \x20 uint at = (gl_WorkGroupID.y * gl_NumWorkGroups.x + gl_WorkGroupID.x) * G;\n\
         {}\
         }}\n",
        norm_group("", 0, store)
    );
    s
}

/// One workgroup's norm of the group at `at` of `x{n}` (push-constant base `base`) with the weight `w{n}`
/// (`base + 1`) and the constants `G{N}`, `EPS{N}`, `UNIT{N}` (`n` the norm's suffix, `N` in capitals), each
/// element stored by `store` (which sees `i`, `inv` and `g`): the sum of squares over the workgroup's threads
/// in `part`, halved down to one.
fn norm_group(n: &str, base: usize, store: &str) -> String {
    let (x, w, xb, wb) = (format!("x{n}"), format!("w{n}"), base, base + 1);
    let up = n.to_uppercase();
    let (g, eps, unit) = (format!("G{up}"), format!("EPS{up}"), format!("UNIT{up}"));
    format!(
        "\x20 float acc = 0.0;\n\
         \x20 for (uint i = lane; i < {g}; i += gl_WorkGroupSize.x) {{ float v = {x}[pc.base[{xb}] + at + i]; acc += v * v; }}\n\
         \x20 part[lane] = acc;\n\
         \x20 barrier();\n\
         \x20 for (uint h = gl_WorkGroupSize.x / 2u; h > 0u; h /= 2u) {{\n\
         \x20   if (lane < h) part[lane] += part[lane + h];\n\
         \x20   barrier();\n\
         \x20 }}\n\
         \x20 float inv = 1.0 / sqrt(part[0] / float({g}) + {eps});\n\
         \x20 for (uint i = lane; i < {g}; i += gl_WorkGroupSize.x) {{\n\
         \x20   float g = {w}[pc.base[{wb}] + i] + ({unit} == 1u ? 1.0 : 0.0);\n\
         \x20   {store}\n\
         \x20 }}\n"
    )
}

/// `rms_norm+rms_norm`: two [`rms_norm`]s side by side in one launch (a layer's q and k norms), each
/// `(group, width, eps, unit_offset)`: the first `width_a / group_a` workgroups of a row take the first norm's
/// groups, the rest the second's, each computed as [`rms_norm`] computes it. Bindings [x_a, w_a, y_a, x_b, w_b,
/// y_b]. Work: `[width_a / group_a + width_b / group_b, rows, 1]`.
pub fn rms_norm_pair(a: (u64, u64, f32, bool), b: (u64, u64, f32, bool)) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    for (i, name) in ["xa", "wa", "ya", "xb", "wb", "yb"].into_iter().enumerate() {
        f32_buffer(&mut s, i, name, if name.starts_with('y') { "" } else { "readonly" });
    }
    for (n, (g, width, eps, unit)) in [("A", a), ("B", b)] {
        def_uint(&mut s, &format!("G{n}"), g);
        def_uint(&mut s, &format!("N{n}"), width / g);
        def_float(&mut s, &format!("EPS{n}"), eps);
        def_uint(&mut s, &format!("UNIT{n}"), unit as u64);
    }
    let _ = write!(
        s,
        "shared float part[{WIDE}];\n\
         void main() {{\n\
         \x20 uint lane = gl_LocalInvocationID.x, grp = gl_WorkGroupID.x, row = gl_WorkGroupID.y;\n\
         \x20 if (grp < NA) {{\n\
         \x20 uint at = row * NA * GA + grp * GA;\n\
         {}\
         \x20 }} else {{\n\
         \x20 uint at = row * NB * GB + (grp - NA) * GB;\n\
         {}\
         \x20 }}\n\
         }}\n",
        norm_group("a", 0, "ya[pc.base[2] + at + i] = xa[pc.base[0] + at + i] * inv * g;"),
        norm_group("b", 3, "yb[pc.base[5] + at + i] = xb[pc.base[3] + at + i] * inv * g;"),
    );
    s
}

/// `rope_<table>`: rotate-half rotary embedding of every `HD`-element head of a `W`-wide row at position
/// `POS + row` (the launch's position, [`position`]), with the table's inverse frequencies generated into the source (their exact f32 bits).
/// Bindings [x, out]. Work: `[ceil(W / 2 / 64), rows, 1]`.
pub fn rope(inv_freq: &[f32], width: u64, head_dim: u64) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    f32_buffer(&mut s, 0, "x", "readonly");
    f32_buffer(&mut s, 1, "y", "");
    position(&mut s);
    def_uint(&mut s, "W", width);
    def_uint(&mut s, "HD", head_dim);
    let bits: Vec<String> = inv_freq.iter().map(|f| format!("0x{:08x}u", f.to_bits())).collect();
    let _ = writeln!(s, "const uint INV_FREQ[{}] = uint[]({});", bits.len().max(1), bits.join(", "));
    s.push_str("void main() {\n");
    s.push_str(SET_POS);
    s.push_str(
        "\x20 uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y, half_ = HD / 2u;\n\
         \x20 if (i >= W / 2u) return;\n\
         \x20 uint head = i / half_, f = i % half_;\n\
         \x20 uint a = pc.base[0] + r * W + head * HD + f, o = pc.base[1] + r * W + head * HD + f;\n\
         \x20 float angle = float(POS + r) * uintBitsToFloat(INV_FREQ[f]);\n\
         \x20 float c = cos(angle), sn = sin(angle);\n\
         \x20 float x0 = x[a], x1 = x[a + half_];\n\
         \x20 y[o] = x0 * c - x1 * sn;\n\
         \x20 y[o + half_] = x1 * c + x0 * sn;\n\
         }\n",
    );
    s
}

/// `rope+rope`: [`rope`] of two tensors with one table (a layer's q and k, of `WA` and `WB` elements per row)
/// in one launch: threads `0..WA / 2` rotate the first, the rest the second. Bindings [x_a, y_a, x_b, y_b].
/// Work: `[ceil((WA + WB) / 2 / 64), rows, 1]`.
pub fn rope_pair(inv_freq: &[f32], wa: u64, wb: u64, head_dim: u64) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    f32_buffer(&mut s, 0, "xa", "readonly");
    f32_buffer(&mut s, 1, "ya", "");
    f32_buffer(&mut s, 2, "xb", "readonly");
    f32_buffer(&mut s, 3, "yb", "");
    position(&mut s);
    def_uint(&mut s, "WA", wa);
    def_uint(&mut s, "WB", wb);
    def_uint(&mut s, "HD", head_dim);
    let bits: Vec<String> = inv_freq.iter().map(|f| format!("0x{:08x}u", f.to_bits())).collect();
    let _ = writeln!(s, "const uint INV_FREQ[{}] = uint[]({});", bits.len().max(1), bits.join(", "));
    s.push_str("void main() {\n");
    s.push_str(SET_POS);
    s.push_str(
        "  uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y, half_ = HD / 2u;
           if (i >= (WA + WB) / 2u) return;
           bool second = i >= WA / 2u;
           uint w = second ? WB : WA, j = second ? i - WA / 2u : i;
           uint head = j / half_, f = j % half_;
           uint a = r * w + head * HD + f;
           float angle = float(POS + r) * uintBitsToFloat(INV_FREQ[f]);
           float c = cos(angle), sn = sin(angle);
           float x0 = second ? xb[pc.base[2] + a] : xa[pc.base[0] + a];
           float x1 = second ? xb[pc.base[2] + a + half_] : xa[pc.base[0] + a + half_];
           float y0 = x0 * c - x1 * sn, y1 = x1 * c + x0 * sn;
           if (second) { yb[pc.base[3] + a] = y0; yb[pc.base[3] + a + half_] = y1; }
           else { ya[pc.base[1] + a] = y0; ya[pc.base[1] + a + half_] = y1; }
         }
",
    );
    s
}

/// The elementwise kernels, over rows of `W` elements; `C` is the op's constant (`scale`, `softcap`). Bindings
/// [a, (b), out]. Work: `[ceil(W / 64), rows, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elementwise {
    Add,
    GluSilu,
    GluGeluTanh,
    Scale,
    Softcap,
}

impl Elementwise {
    pub fn name(self) -> &'static str {
        match self {
            Elementwise::Add => "add",
            Elementwise::GluSilu => "glu_silu",
            Elementwise::GluGeluTanh => "glu_gelutanh",
            Elementwise::Scale => "scale",
            Elementwise::Softcap => "softcap",
        }
    }

    fn binary(self) -> bool {
        matches!(self, Elementwise::Add | Elementwise::GluSilu | Elementwise::GluGeluTanh)
    }
}

pub fn elementwise(op: Elementwise, width: u64, c: f32) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    f32_buffer(&mut s, 0, "a", "readonly");
    let out = if op.binary() {
        f32_buffer(&mut s, 1, "b", "readonly");
        2
    } else {
        1
    };
    f32_buffer(&mut s, out, "y", "");
    def_uint(&mut s, "W", width);
    def_float(&mut s, "C", c);
    let expr = match op {
        Elementwise::Add => "u + b[pc.base[1] + e]",
        Elementwise::GluSilu => "u / (1.0 + exp(-u)) * b[pc.base[1] + e]",
        // gelu(u) with the tanh approximation, as the reference computes it.
        Elementwise::GluGeluTanh => {
            "0.5 * u * (1.0 + tanh(0.7978845608028654 * (u + 0.044715 * u * u * u))) * b[pc.base[1] + e]"
        }
        Elementwise::Scale => "u * C",
        Elementwise::Softcap => "C * tanh(u / C)",
    };
    let _ = write!(
        s,
        "void main() {{\n\
         \x20 uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y;\n\
         \x20 if (i >= W) return;\n\
         \x20 uint e = r * W + i;\n\
         \x20 float u = a[pc.base[0] + e];\n\
         \x20 y[pc.base[{out}] + e] = {expr};\n\
         }}\n"
    );
    s
}

/// Threads of an argmax workgroup.
pub const ARGMAX_THREADS: u32 = 256;

/// What [`argmax`] and [`top_k`] pick with: each thread's candidate (a logit and its index, `NONE` for none)
/// in `bv` / `bi`, and `fold(t, h0)`, a tree over threads `0..2 h0` that leaves the first in the pickers'
/// order in `bv[0]` / `bi[0]` (read by every thread after it returns): a number before none, a larger value
/// first, of equals the smaller index.
const PICK_FOLD: &str = "\
shared float bv[256];
shared uint bi[256];
shared bool last;
const uint NONE = 0xffffffffu;
bool before(float o, uint oi, float b, uint bi) {
  return oi != NONE && (bi == NONE || o > b || (o == b && oi < bi));
}
void fold(uint t, uint h0) {
  barrier();
  for (uint h = h0; h > 0u; h >>= 1u) {
    if (t < h && before(bv[t + h], bi[t + h], bv[t], bi[t])) { bv[t] = bv[t + h]; bi[t] = bi[t + h]; }
    barrier();
  }
}
";
const _: () = assert!(ARGMAX_THREADS == 256);

/// `argmax`: row `r`'s greedy token, the index of its largest of `V` logits (the first of equals; NaNs are
/// never picked), into `ids[r]`, in one launch of [`ARGMAX_GROUPS`] workgroups per row, each over its own
/// stretch of the row (a single workgroup would read a large vocabulary a few loads at a time). Each thread
/// scans every 256th logit of its workgroup's stretch, keeping its first largest, and the threads' picks meet
/// in a tree that prefers the smaller index on a tie; the workgroup writes its pick to the row's partials in
/// `ids` (from word `pc.cap`: per row `2 * ARGMAX_GROUPS` words, then its counter), and the last workgroup of
/// the row to finish (the counter says which) folds the partials the same way, writes the id, and resets the
/// counter to zero for the next launch. Bindings [logits, ids]. Work: `[ARGMAX_GROUPS, rows, 1]`.
pub fn argmax(v: u64) -> String {
    let mut s = String::new();
    header(&mut s, ARGMAX_THREADS, 1);
    f32_buffer(&mut s, 0, "logits", "readonly");
    // Coherent: the last workgroup reads the partials the others wrote in this launch.
    buffer(&mut s, 1, "uint", "ids", "coherent");
    def_uint(&mut s, "V", v);
    def_uint(&mut s, "GROUPS", ARGMAX_GROUPS as u64);
    let _ = write!(
        s,
        "{PICK_FOLD}\
         void main() {{\n\
         \x20 uint g = gl_WorkGroupID.x, r = gl_WorkGroupID.y, t = gl_LocalInvocationID.x, at = pc.base[0] + r * V;\n\
         \x20 uint span = (V + GROUPS - 1u) / GROUPS, lo = g * span, hi = min(lo + span, V);\n\
         \x20 uint part = pc.base[1] + pc.cap + r * (2u * GROUPS + 1u), counter = part + 2u * GROUPS;\n\
         \x20 float best = 0.0;\n\
         \x20 uint pick = NONE;\n\
         \x20 // Eight loads in flight before the compares (a loop of one load at a time waits on each).\n\
         \x20 for (uint i0 = lo + t; i0 < hi; i0 += 8u * {ARGMAX_THREADS}u) {{\n\
         \x20   float x[8];\n\
         \x20   for (uint u = 0u; u < 8u; u++) {{ uint i = i0 + u * {ARGMAX_THREADS}u; x[u] = i < hi ? logits[at + i] : 0.0; }}\n\
         \x20   for (uint u = 0u; u < 8u; u++) {{\n\
         \x20     uint i = i0 + u * {ARGMAX_THREADS}u;\n\
         \x20     if (i < hi && !isnan(x[u]) && (pick == NONE || x[u] > best)) {{ best = x[u]; pick = i; }}\n\
         \x20   }}\n\
         \x20 }}\n\
         \x20 bv[t] = best;\n\
         \x20 bi[t] = pick;\n\
         \x20 fold(t, {half}u);\n\
         \x20 if (t == 0u) {{\n\
         \x20   ids[part + 2u * g] = floatBitsToUint(bv[0]);\n\
         \x20   ids[part + 2u * g + 1u] = bi[0];\n\
         \x20   memoryBarrierBuffer();\n\
         \x20   last = atomicAdd(ids[counter], 1u) == GROUPS - 1u;\n\
         \x20 }}\n\
         \x20 barrier();\n\
         \x20 if (!last) return;\n\
         \x20 memoryBarrierBuffer();\n\
         \x20 bv[t] = t < GROUPS ? uintBitsToFloat(ids[part + 2u * t]) : 0.0;\n\
         \x20 bi[t] = t < GROUPS ? ids[part + 2u * t + 1u] : NONE;\n\
         \x20 fold(t, {half}u);\n\
         \x20 if (t == 0u) {{\n\
         \x20   ids[pc.base[1] + r] = bi[0] == NONE ? 0u : bi[0];\n\
         \x20   ids[counter] = 0u;\n\
         \x20 }}\n\
         }}\n",
        half = ARGMAX_THREADS / 2
    );
    s
}

/// `top_k`: row `r`'s `k = pc.keep` largest logits and their indices (largest first; of equals the smaller
/// index first; NaNs never picked), `k` at most [`MAX_TOP_K`], into the results binding at
/// `r * TOP_K_WORDS` as pairs (the logit's bits, its index; index `0xffffffff` past the row's last number),
/// in one launch of [`top_k_groups`] workgroups per row. Each thread holds 16 logits of its workgroup's 4096
/// in registers and its best one not yet taken; `k` rounds each fold the threads' bests in a tree (as
/// [`argmax`] does) and the winner's thread takes it and finds its next best, so the workgroup's picks come out
/// in order into its list in the scratch binding. The last workgroup of the row to finish (its counter says
/// which) merges the sorted lists the same way, a thread per list advancing its head, writes the results and
/// resets the counter to zero for the next launch. Bindings [logits, results, scratch]. Work:
/// `[top_k_groups(V), rows, 1]`.
pub fn top_k(v: u64) -> String {
    let mut s = String::new();
    header(&mut s, ARGMAX_THREADS, 1);
    f32_buffer(&mut s, 0, "logits", "readonly");
    u32_buffer(&mut s, 1, "res", "");
    // Coherent: the last workgroup reads the lists the others wrote in this launch.
    u32_buffer(&mut s, 2, "scratch", "coherent");
    def_uint(&mut s, "V", v);
    def_uint(&mut s, "GROUPS", top_k_groups(v));
    def_uint(&mut s, "E", TOP_K_PER_THREAD);
    def_uint(&mut s, "MAXK", MAX_TOP_K);
    def_uint(&mut s, "LIST", TOP_K_WORDS);
    assert!(
        top_k_groups(v) <= ARGMAX_THREADS as u64,
        "a vocabulary of at most {} logits",
        256 * 256 * TOP_K_PER_THREAD
    );
    let _ = write!(
        s,
        "{PICK_FOLD}\
         void main() {{\n\
         \x20 uint g = gl_WorkGroupID.x, r = gl_WorkGroupID.y, t = gl_LocalInvocationID.x, k = min(pc.keep, MAXK);\n\
         \x20 uint at = pc.base[0] + r * V, lo = g * E * {ARGMAX_THREADS}u;\n\
         \x20 uint rows = pc.base[2] + r * (GROUPS * LIST + 1u), counter = rows + GROUPS * LIST;\n\
         \x20 // This thread's logits (lo + t + 256e), those taken or past the row (or NaN) marked in `gone`.\n\
         \x20 float x[E];\n\
         \x20 uint gone = 0u;\n\
         \x20 for (uint e = 0u; e < E; e++) {{\n\
         \x20   uint i = lo + t + e * {ARGMAX_THREADS}u;\n\
         \x20   x[e] = i < V ? logits[at + i] : 0.0;\n\
         \x20   if (i >= V || isnan(x[e])) gone |= 1u << e;\n\
         \x20 }}\n\
         \x20 for (uint rd = 0u; rd < k; rd++) {{\n\
         \x20   // This thread's best left: the first of its largest (its indices rise with e).\n\
         \x20   float best = 0.0;\n\
         \x20   uint pick = NONE, slot = 0u;\n\
         \x20   for (uint e = 0u; e < E; e++)\n\
         \x20     if ((gone & (1u << e)) == 0u && (pick == NONE || x[e] > best)) {{ best = x[e]; pick = lo + t + e * {ARGMAX_THREADS}u; slot = e; }}\n\
         \x20   bv[t] = best;\n\
         \x20   bi[t] = pick;\n\
         \x20   fold(t, {half}u);\n\
         \x20   if (pick != NONE && bi[0] == pick) gone |= 1u << slot;\n\
         \x20   if (t == 0u) {{ scratch[rows + g * LIST + 2u * rd] = floatBitsToUint(bv[0]); scratch[rows + g * LIST + 2u * rd + 1u] = bi[0]; }}\n\
         \x20   barrier();\n\
         \x20 }}\n\
         \x20 if (t == 0u) {{\n\
         \x20   memoryBarrierBuffer();\n\
         \x20   last = atomicAdd(scratch[counter], 1u) == GROUPS - 1u;\n\
         \x20 }}\n\
         \x20 barrier();\n\
         \x20 if (!last) return;\n\
         \x20 memoryBarrierBuffer();\n\
         \x20 // Merge: thread t < GROUPS walks workgroup t's list, its head the next pick not yet taken.\n\
         \x20 uint head = 0u, dst = pc.base[1] + r * LIST;\n\
         \x20 for (uint rd = 0u; rd < k; rd++) {{\n\
         \x20   uint pick = NONE;\n\
         \x20   float best = 0.0;\n\
         \x20   if (t < GROUPS && head < k) {{ best = uintBitsToFloat(scratch[rows + t * LIST + 2u * head]); pick = scratch[rows + t * LIST + 2u * head + 1u]; }}\n\
         \x20   bv[t] = best;\n\
         \x20   bi[t] = pick;\n\
         \x20   fold(t, {merge}u);\n\
         \x20   if (pick != NONE && bi[0] == pick) head++;\n\
         \x20   if (t == 0u) {{ res[dst + 2u * rd] = floatBitsToUint(bv[0]); res[dst + 2u * rd + 1u] = bi[0]; }}\n\
         \x20   barrier();\n\
         \x20 }}\n\
         \x20 if (t == 0u) scratch[counter] = 0u;\n\
         }}\n",
        half = ARGMAX_THREADS / 2,
        // The merge folds the lists' heads alone: a tree over the next power of two of them.
        merge = (top_k_groups(v).next_power_of_two() / 2).max(1),
    );
    s
}

/// `select_rows`: the last `pc.keep` of `pc.rows` rows of `W` elements. Bindings [x, out]. Work:
/// `[ceil(W / 64), keep, 1]`.
pub fn select_rows(width: u64) -> String {
    let mut s = String::new();
    header(&mut s, WIDE, 1);
    f32_buffer(&mut s, 0, "x", "readonly");
    f32_buffer(&mut s, 1, "y", "");
    def_uint(&mut s, "W", width);
    s.push_str(
        "void main() {\n\
         \x20 uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y;\n\
         \x20 if (i >= W) return;\n\
         \x20 y[pc.base[1] + r * W + i] = x[pc.base[0] + (pc.rows - pc.keep + r) * W + i];\n\
         }\n",
    );
    s
}

/// The largest head whose keys prefill attention stages in shared memory, a chunk at a time (16 keys of 129
/// floats beside the split pass's arrays: within the 16 KiB every device has).
const ATTN_STAGED_HEAD_DIM: u64 = 128;

/// The largest attention head the kernel takes (eight dimensions per thread of a 64-thread group).
pub const MAX_HEAD_DIM: u64 = 512;

/// Whether [`attention`] takes heads of `head_dim` dimensions: even (keys and values are read in pairs) and at
/// most [`MAX_HEAD_DIM`].
pub fn attention_head_fits(head_dim: u64) -> bool {
    head_dim.is_multiple_of(2) && (2..=MAX_HEAD_DIM).contains(&head_dim)
}

/// The geometry of an attention op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub window: Option<u64>,
    pub scale: f32,
}

/// `attention[_windowed]_<kv dtype>`: causal grouped-query attention of each query head over the positions it
/// sees — the cache's before `POS`, this execution's `k`/`v` rows from `POS` on — with an online softmax
/// over chunks of keys: in prefill a workgroup takes 16 rows of a head ([`ATTN_TILE_ROWS`]) and chunks of 16
/// keys (`TILED_ATTENTION`), in decode a row's keys split into ranges (`SPLIT_ATTENTION`).
///
/// Bindings [q, k, v, kv cache, out]; the cache holds the keys, then the values, each `KVH * pc.cap * HD`
/// elements, head-major (kv head `g`, ring slot `t` at `(g * cap + t) * HD`); `WINDOW` 0 is none. Pass 0
/// attends (work `[H, ceil(rows / 16), 1]`); pass 1, run after it,
/// appends the execution's keys and values to the cache (work `[ceil(KVH * HD / 2 / 64), rows, 1]`), so no
/// workgroup of pass 0 reads a slot another overwrites; of `pc.rows` rows that land on one ring slot (a window
/// shorter than the execution) only the last is written. A launch of one row (a decode step) runs pass 2
/// instead, over `[H, 1, splits]` with `pc.keep` = splits: it attends in key ranges, appends the row and
/// combines the ranges (see `SPLIT_ATTENTION`).
///
/// `subgroup` is the device's subgroup size where it has subgroup shuffles (0 where not): with one at least
/// [`attention_lanes`], heads of up to [`ATTN_BLOCKED_HEAD_DIM`] dimensions (a multiple of four) take the
/// blocked pass 0 instead (see [`attention_tile_rows`]).
pub fn attention(kv_f16: bool, shape: AttentionShape, subgroup: u32) -> String {
    attention_with(kv_f16, shape, None, subgroup)
}

/// `rope+rope+attention[_windowed]_<kv dtype>` (decode): [`attention`]'s split pass with the RoPE of its q
/// and k fused in (`inv_freq`, the table of both) — each workgroup rotates its head's query and the row's key
/// as it reads them, and the key goes into the cache rotated, so that neither rotated tensor is written.
/// Bindings: the two ropes' [x_q, y_q, x_k, y_k], then attention's [q, k, v, kv cache, out], of which it reads
/// x_q, x_k, v and the cache (y_q, y_k and attention's q and k are the values it fuses away) and writes the
/// cache and out. Only the split pass (2): a launch of another pass does nothing.
pub fn rope_attention(kv_f16: bool, shape: AttentionShape, inv_freq: &[f32], subgroup: u32) -> String {
    attention_with(kv_f16, shape, Some(inv_freq), subgroup)
}

/// The largest head the blocked prefill pass takes: a row's query and output spread over at most 8 lanes of
/// [`ATTN_BLOCK_DIMS`] dimensions.
pub const ATTN_BLOCKED_HEAD_DIM: u64 = 128;

/// Dimensions of a head that one thread of the blocked prefill pass holds, of its row's query and output (four
/// vec4s each, in registers).
const ATTN_BLOCK_DIMS: u64 = 16;

/// Threads a query row takes in the blocked prefill pass: its head's dimensions in [`ATTN_BLOCK_DIMS`]
/// shares, a power of two of at least two (a head of 96 takes 8, the last two holding zeros).
pub fn attention_lanes(head_dim: u64) -> u64 {
    head_dim.div_ceil(ATTN_BLOCK_DIMS).next_power_of_two().max(2)
}

/// Whether [`attention`] with this `subgroup` (0: no shuffles) takes the blocked prefill pass for `shape`.
fn attention_blocked(shape: AttentionShape, subgroup: u32) -> bool {
    shape.head_dim.is_multiple_of(4)
        && shape.head_dim <= ATTN_BLOCKED_HEAD_DIM
        && subgroup as u64 >= attention_lanes(shape.head_dim)
}

/// Query rows one workgroup of [`attention`]'s pass 0 takes: [`ATTN_TILE_ROWS`], or in the blocked pass
/// its threads over [`attention_lanes`] (64 rows of a 64-dimension head, 32 of a 128).
pub fn attention_tile_rows(shape: AttentionShape, subgroup: u32) -> u32 {
    if attention_blocked(shape, subgroup) {
        ATTN_THREADS / attention_lanes(shape.head_dim) as u32
    } else {
        ATTN_TILE_ROWS
    }
}

fn attention_with(kv_f16: bool, shape: AttentionShape, rope: Option<&[f32]>, subgroup: u32) -> String {
    let mut s = String::new();
    let blocked = rope.is_none() && attention_blocked(shape, subgroup);
    // The split pass meets each key's four score shares by shuffles where the device has them.
    let sg_split = subgroup >= 4;
    header_with(&mut s, ATTN_THREADS, 1, if blocked || sg_split { &SUBGROUP_EXTENSIONS } else { &[] });
    // The bindings of q, k, v, the cache and the result.
    let at: [usize; 5] = if rope.is_some() { [0, 2, 6, 7, 8] } else { [0, 1, 2, 3, 4] };
    f32_buffer(&mut s, at[0], "q", "readonly");
    f32_buffer(&mut s, at[1], "k", "readonly");
    f32_buffer(&mut s, at[2], "v", "readonly");
    // Coherent: the split partials that workgroups of one launch exchange live after the cache's keys and values.
    u32_buffer(&mut s, at[3], "kv", "coherent");
    // The cache's keys and values are read through a plain alias of the binding: coherence (which the partials
    // need) would keep those loads out of the first-level cache. No workgroup reads a slot that one of the same
    // launch writes (see `append` and `attend_split`).
    let _ = writeln!(s, "layout(std430, binding = {}) readonly buffer B{}r {{ uint kvr[]; }};", at[3], at[3]);
    f32_buffer(&mut s, at[4], "y", "");
    for (name, b) in ["QB", "KB", "VB", "KVB", "YB"].iter().zip(at) {
        def_uint(&mut s, name, b as u64);
    }
    position(&mut s);
    def_uint(&mut s, "H", shape.heads);
    def_uint(&mut s, "KVH", shape.kv_heads);
    def_uint(&mut s, "HD", shape.head_dim);
    def_uint(&mut s, "WINDOW", shape.window.unwrap_or(0));
    def_float(&mut s, "SCALE", shape.scale);
    let _ = writeln!(s, "#define ROPE {}", rope.is_some() as u32);
    let _ = writeln!(s, "#define SG_SPLIT {}", sg_split as u32);
    // Prefill stages each chunk's keys in shared memory where they fit beside the split pass's arrays in the
    // 16 KiB every device has.
    let _ = writeln!(s, "#define STAGE_KEYS {}", (shape.head_dim <= ATTN_STAGED_HEAD_DIM) as u32);
    if let Some(inv) = rope {
        let bits: Vec<String> = inv.iter().map(|f| format!("0x{:08x}u", f.to_bits())).collect();
        let _ = writeln!(s, "const uint INV_FREQ[{}] = uint[]({});", bits.len().max(1), bits.join(", "));
    }
    // Element `e` of the cache (keys from 0, values from KVH * cap * HD), and a pair store for the append.
    if kv_f16 {
        s.push_str(
            "float kv_get(uint e) { vec2 h = unpackHalf2x16(kvr[pc.base[KVB] + e / 2u]); return (e & 1u) == 0u ? h.x : h.y; }\n\
             vec2 kv_get2(uint e) { return unpackHalf2x16(kvr[pc.base[KVB] + e / 2u]); }\n\
             void kv_put2(uint e, float a, float b) { kv[pc.base[KVB] + e / 2u] = packHalf2x16(vec2(a, b)); }\n",
        );
    } else {
        s.push_str(
            "float kv_get(uint e) { return uintBitsToFloat(kvr[pc.base[KVB] + e]); }\n\
             vec2 kv_get2(uint e) { return vec2(uintBitsToFloat(kvr[pc.base[KVB] + e]), uintBitsToFloat(kvr[pc.base[KVB] + e + 1u])); }\n\
             void kv_put2(uint e, float a, float b) { kv[pc.base[KVB] + e] = floatBitsToUint(a); kv[pc.base[KVB] + e + 1u] = floatBitsToUint(b); }\n",
        );
    }
    assert!(attention_head_fits(shape.head_dim), "attention heads of an even dimension up to {MAX_HEAD_DIM}");
    def_uint(&mut s, "SPLIT_KEYS", ATTN_SPLIT_KEYS);
    def_uint(&mut s, "SPLIT_ROWS", ATTN_SPLIT_ROWS);
    def_uint(&mut s, "MAX_SPLITS", ATTN_MAX_SPLITS);
    // Words of the keys and values before the split partials.
    def_uint(
        &mut s,
        "KV_WORDS_PER_SLOT",
        if kv_f16 { shape.kv_heads * shape.head_dim } else { 2 * shape.kv_heads * shape.head_dim },
    );
    let _ = write!(
        s,
        "const uint MAX_HD_PER_LANE = 8u;\n\
         shared float part[{ATTN_THREADS}];\n\
         shared float qs[MAX_HD_PER_LANE * {WIDE}];\n\
         shared float ps[{ATTN_THREADS}];\n"
    );
    s.push_str(SPLIT_ATTENTION);
    if rope.is_some() {
        let _ = write!(s, "void main() {{\n{SET_POS}\x20 if (pc.pass == 2u) attend_split();\n}}\n");
        return s;
    }
    let _ = write!(
        s,
        "\
         void append() {{\n\
         \x20 uint i = gl_GlobalInvocationID.x, r = gl_WorkGroupID.y;\n\
         \x20 if (i >= KVH * HD / 2u || r + pc.cap < pc.rows) return; // a row a later one of the ring overwrites\n\
         \x20 uint g = (2u * i) / HD, d = (2u * i) % HD, p = POS + r;\n\
         \x20 uint src = r * KVH * HD + g * HD + d;\n\
         \x20 uint dst = (g * pc.cap + p % pc.cap) * HD + d, vals = KVH * pc.cap * HD;\n\
         \x20 kv_put2(dst, k[pc.base[KB] + src], k[pc.base[KB] + src + 1u]);\n\
         \x20 kv_put2(vals + dst, v[pc.base[VB] + src], v[pc.base[VB] + src + 1u]);\n\
         }}\n\
         // Value `d` of position `j`: from the cache before POS, from this execution's rows after.\n\
         float value(uint g, uint j, uint d) {{\n\
         \x20 return j < POS ? kv_get(KVH * pc.cap * HD + (g * pc.cap + j % pc.cap) * HD + d) : v[pc.base[VB] + (j - POS) * KVH * HD + g * HD + d];\n\
         }}\n\
         {tiled}\
         void main() {{\n\
         {SET_POS}\
         \x20 if (pc.pass == 1u) {{ append(); return; }}\n\
         \x20 if (pc.pass == 2u) {{ attend_split(); return; }}\n\
         \x20 attend_tiled();\n\
         }}\n",
        tiled = if blocked { blocked_attention(shape.head_dim) } else { TILED_ATTENTION.to_string() }
    );
    s
}

/// Pass 0 of [`attention`] on devices with subgroup shuffles, for heads up to [`ATTN_BLOCKED_HEAD_DIM`]:
/// thread `t` holds [`ATTN_BLOCK_DIMS`] dimensions (lane `t % LANES`) of query row `t / LANES`'s q and
/// output in registers, and the workgroup walks the keys in chunks of `KC` (`64 / LANES`: 16 for a head of
/// 64), staged in shared memory as vec4s, the next chunk's loads in flight while one is used. Each thread
/// scores every key of the chunk over its dimensions, the row's lanes add their shares by shuffles, and each
/// then keeps the row's online softmax itself and folds the chunk's values into its dimensions: no barrier
/// but the two a chunk's staging needs, and sixteen multiply-adds per shared load. A row's lane `l` reads its
/// vec4 `i` of a key at `i ^ ((l >> 1) & 3)` within its share, so that the lanes of a load fall in distinct
/// banks.
fn blocked_attention(head_dim: u64) -> String {
    let lanes = attention_lanes(head_dim);
    let kc = 64 / lanes;
    let vecs = ATTN_BLOCK_DIMS / 4;
    let mut s = String::new();
    let _ = write!(
        s,
        "#define LANES {lanes}u\n\
         #define KC {kc}u\n\
         #define QT {qt}u\n\
         shared vec4 kb4[KC * LANES * 4u];\n\
         shared vec4 vb4[KC * LANES * 4u];\n",
        qt = ATTN_THREADS as u64 / lanes
    );
    // Four consecutive elements of key / value `j` of kv head `g` from dimension `d` (a multiple of 4): two
    // of the split pass's pair reads, from the cache or this execution's rows.
    s.push_str(
        "vec4 key4(uint g, uint j, uint d) { return vec4(key2(g, j, d), key2(g, j, d + 2u)); }\n\
         vec4 value4(uint g, uint j, uint d) { return vec4(value2(g, j, d), value2(g, j, d + 2u)); }\n",
    );
    let vs = |f: &dyn Fn(u64) -> String, sep: &str| (0..vecs).map(f).collect::<Vec<_>>().join(sep);
    let ks = |f: &dyn Fn(u64) -> String, sep: &str| (0..kc).map(f).collect::<Vec<_>>().join(sep);
    let q_load = vs(
        &|i| {
            format!(
                "vec4 q{i} = {i}u * 4u + d0 < HD ? vec4(q[qa + {i}u * 4u], q[qa + {i}u * 4u + 1u], q[qa + {i}u * 4u + 2u], \
                 q[qa + {i}u * 4u + 3u]) : vec4(0.0);"
            )
        },
        "\n  ",
    );
    let o_decl = vs(&|i| format!("o{i} = vec4(0.0)"), ", ");
    let scores = ks(
        &|c| {
            let terms = vs(&|i| format!("dot(q{i}, kb4[{c}u * LANES * 4u + kl + ({i}u ^ sw)])"), " + ");
            format!("float s{c} = {terms};")
        },
        "\n    ",
    );
    let mut shuffles = String::new();
    let mut w = 1;
    while w < lanes {
        let _ = write!(shuffles, "{}\n    ", ks(&|c| format!("s{c} += subgroupShuffleXor(s{c}, {w}u);"), " "));
        w *= 2;
    }
    let mask = ks(&|c| format!("bool v{c} = j0 + {c}u >= first && j0 + {c}u <= p;"), "\n    ");
    let scaled = ks(&|c| format!("s{c} = v{c} ? s{c} * SCALE : uintBitsToFloat(0xff7fffffu);"), "\n    ");
    // The chunk's largest score, as a tree of pairs.
    let mut max: Vec<String> = (0..kc).map(|c| format!("s{c}")).collect();
    while max.len() > 1 {
        max = max
            .chunks(2)
            .map(|p| if p.len() == 2 { format!("max({}, {})", p[0], p[1]) } else { p[0].clone() })
            .collect();
    }
    let max = &max[0];
    let exps = ks(&|c| format!("s{c} = v{c} ? exp(s{c} - mn) : 0.0;"), "\n    ");
    let sum = ks(&|c| format!("s{c}"), " + ");
    let fold = vs(
        &|i| {
            let terms = ks(&|c| format!("s{c} * vb4[{c}u * LANES * 4u + kl + ({i}u ^ sw)]"), " + ");
            format!("o{i} = o{i} * corr + {terms};")
        },
        "\n    ",
    );
    let store = vs(
        &|i| {
            format!(
                "if ({i}u * 4u + d0 < HD) {{ y[ya + {i}u * 4u] = o{i}.x / l; y[ya + {i}u * 4u + 1u] = o{i}.y / l; \
                 y[ya + {i}u * 4u + 2u] = o{i}.z / l; y[ya + {i}u * 4u + 3u] = o{i}.w / l; }}"
            )
        },
        "\n  ",
    );
    let _ = write!(
        s,
        "void attend_tiled() {{\n\
         \x20 uint h = gl_WorkGroupID.x, t = gl_LocalInvocationID.x, lane = t % LANES, qi = t / LANES;\n\
         \x20 uint g = h / (H / KVH), r0 = gl_WorkGroupID.y * QT, r = r0 + qi, last = min(r0 + QT, pc.rows) - 1u;\n\
         \x20 bool live = r < pc.rows;\n\
         \x20 // This row's visible keys (a row past the launch's takes the last one's), and the tile's.\n\
         \x20 uint p = POS + min(r, last);\n\
         \x20 uint first = (WINDOW != 0u && p + 1u > WINDOW) ? p + 1u - WINDOW : 0u;\n\
         \x20 uint p0 = POS + r0, plast = POS + last;\n\
         \x20 uint lo = (WINDOW != 0u && p0 + 1u > WINDOW) ? p0 + 1u - WINDOW : 0u;\n\
         \x20 uint d0 = lane * {dims}u, qa = pc.base[QB] + min(r, last) * H * HD + h * HD + d0;\n\
         \x20 {q_load}\n\
         \x20 vec4 {o_decl};\n\
         \x20 float m = uintBitsToFloat(0xff7fffffu), l = 0.0;\n\
         \x20 // The vec4 of a chunk this thread stages: key sc, lane share sl, vec4 si of it.\n\
         \x20 uint sc = t / (LANES * 4u), sl = (t / 4u) % LANES, si = t % 4u, sd = sl * {dims}u + si * 4u;\n\
         \x20 uint sat = (sc * LANES + sl) * 4u + (si ^ ((sl >> 1u) & 3u));\n\
         \x20 uint kl = lane * 4u, sw = (lane >> 1u) & 3u;\n\
         \x20 bool sok = lo + sc <= plast && sd < HD;\n\
         \x20 vec4 nk = sok ? key4(g, lo + sc, sd) : vec4(0.0), nv = sok ? value4(g, lo + sc, sd) : vec4(0.0);\n\
         \x20 for (uint j0 = lo; j0 <= plast; j0 += KC) {{\n\
         \x20   kb4[sat] = nk;\n\
         \x20   vb4[sat] = nv;\n\
         \x20   barrier();\n\
         \x20   // The next chunk's loads, in flight while this one is used.\n\
         \x20   uint jn = j0 + KC + sc;\n\
         \x20   sok = jn <= plast && sd < HD;\n\
         \x20   nk = sok ? key4(g, jn, sd) : vec4(0.0);\n\
         \x20   nv = sok ? value4(g, jn, sd) : vec4(0.0);\n\
         \x20   {scores}\n\
         \x20   {shuffles}{mask}\n\
         \x20   {scaled}\n\
         \x20   float mn = max(m, {max});\n\
         \x20   float corr = exp(m - mn);\n\
         \x20   {exps}\n\
         \x20   l = l * corr + {sum};\n\
         \x20   {fold}\n\
         \x20   m = mn;\n\
         \x20   barrier();\n\
         \x20 }}\n\
         \x20 if (!live) return;\n\
         \x20 uint ya = pc.base[YB] + r * H * HD + h * HD + d0;\n\
         \x20 {store}\n\
         }}\n",
        dims = ATTN_BLOCK_DIMS,
    );
    s
}

/// Pass 0 of [`attention`]: a workgroup takes `QT` rows of one head, thread `t` query row `t / KC` against
/// key `t % KC` of each chunk of `KC` keys: the chunk's scores, the rows' online softmax over them, and each
/// thread's share of its row's output dimensions (`t % KC`, then every `KC`-th). The keys and values of a chunk
/// are read by the workgroup once for all its rows, which see the keys from the first one any of them sees to
/// the last row's own; heads of up to [`ATTN_STAGED_HEAD_DIM`] dimensions stage the chunk's keys in shared
/// memory first, read pair by pair across the threads.
const TILED_ATTENTION: &str = "\
#define QT 16u // ATTN_TILE_ROWS
#define KC 16u
#define DPL ((HD + KC - 1u) / KC)
shared float tp[QT * KC];
#if STAGE_KEYS
shared float ksh[KC * (HD + 1u)];
#endif
void attend_tiled() {
  uint h = gl_WorkGroupID.x, r0 = gl_WorkGroupID.y * QT, t = gl_LocalInvocationID.x;
  uint qi = t / KC, kj = t % KC, g = h / (H / KVH);
  uint r = r0 + qi, last = min(r0 + QT, pc.rows) - 1u;
  bool live = r < pc.rows;
  // This row's visible keys (a row past the launch's takes the last one's), and the tile's.
  uint p = POS + min(r, last);
  uint first = (WINDOW != 0u && p + 1u > WINDOW) ? p + 1u - WINDOW : 0u;
  uint p0 = POS + r0, plast = POS + last;
  uint lo = (WINDOW != 0u && p0 + 1u > WINDOW) ? p0 + 1u - WINDOW : 0u;
  uint qa = pc.base[QB] + min(r, last) * H * HD + h * HD;
  float m = uintBitsToFloat(0xff7fffffu), l = 0.0;
  float o[DPL];
  for (uint i = 0u; i < DPL; i++) o[i] = 0.0;
  for (uint j0 = lo; j0 <= plast; j0 += KC) {
    uint j = j0 + kj;
    bool vis = live && j >= first && j <= p;
    float sc = uintBitsToFloat(0xff7fffffu);
#if STAGE_KEYS
    // The chunk's keys into shared memory, neighbouring threads reading neighbouring pairs of one key (a
    // thread reading its own key's dimensions would make every load touch KC keys' lines).
    for (uint e = t; e < KC * (HD / 2u); e += 256u) {
      uint c = e / (HD / 2u), d = 2u * (e % (HD / 2u));
      vec2 kk = j0 + c <= plast ? key2(g, j0 + c, d) : vec2(0.0);
      ksh[c * (HD + 1u) + d] = kk.x;
      ksh[c * (HD + 1u) + d + 1u] = kk.y;
    }
    barrier();
    if (vis) {
      float acc = 0.0;
      for (uint d = 0u; d < HD; d += 2u) acc += q[qa + d] * ksh[kj * (HD + 1u) + d] + q[qa + d + 1u] * ksh[kj * (HD + 1u) + d + 1u];
      sc = acc * SCALE;
    }
#else
    if (vis) {
      float acc = 0.0;
      for (uint d = 0u; d < HD; d += 2u) { vec2 kk = key2(g, j, d); acc += q[qa + d] * kk.x + q[qa + d + 1u] * kk.y; }
      sc = acc * SCALE;
    }
#endif
    tp[t] = sc;
    barrier();
    float mx = m;
    for (uint c = 0u; c < KC; c++) mx = max(mx, tp[qi * KC + c]);
    barrier();
    tp[t] = vis ? exp(sc - mx) : 0.0;
    barrier();
    float sum = 0.0;
    for (uint c = 0u; c < KC; c++) sum += tp[qi * KC + c];
    float corr = exp(m - mx);
    l = l * corr + sum;
    uint count = min(KC, plast + 1u - j0);
    for (uint i = 0u; i < DPL; i++) {
      uint d = kj + i * KC;
      if (d >= HD) break;
      float a = o[i] * corr;
      // A constant trip count, so that the compiler can put the chunk's loads in flight at once.
      for (uint c = 0u; c < KC; c++)
        if (c < count) a += tp[qi * KC + c] * value(g, j0 + c, d);
      o[i] = a;
    }
    m = mx;
    barrier();
  }
  if (!live) return;
  uint ya = pc.base[YB] + r * H * HD + h * HD;
  for (uint i = 0u; i < DPL; i++) {
    uint d = kj + i * KC;
    if (d < HD) y[ya + d] = o[i] / l;
  }
}
";

/// The split-key pass of [`attention`] (pass 2: one key range per workgroup along z, which also appends the
/// row to the cache), for launches of one row ([`ATTN_SPLIT_ROWS`]). A workgroup takes chunks of `SPLIT_KEYS`
/// keys of its range: four threads score each key (every fourth dimension pair), and each thread then folds
/// one dimension pair of every `SUBSETS`-th key's value into its sums. With one split it writes the result;
/// otherwise it writes its maximum, its sum of exponentials and its weighted values to the partials after the
/// cache's keys and values (row, head, split) and counts itself done on the head's counter after them; the
/// last range of a head to finish rescales all the head's partials to their common maximum and writes the
/// result (no second launch). An empty range writes a maximum of -FLT_MAX and zero sums, which the combining
/// weighs by exp(-huge) = 0.
const SPLIT_ATTENTION: &str = "\
#define PAIRS (HD / 2u)
#define SUBSETS (256u / PAIRS)
shared float vpart[512];
shared bool last_range;
shared float zw[MAX_SPLITS], zl[MAX_SPLITS];
#if SG_SPLIT
shared float sps[2u * SPLIT_KEYS], smx[2u * 64u], lsub[SUBSETS];
#endif
uint split_at(uint r, uint h, uint z, uint splits) {
  return pc.base[KVB] + KV_WORDS_PER_SLOT * pc.cap + ((r * H + h) * splits + z) * (HD + 2u);
}
// The count of a head's ranges done, after the largest launch's partials.
uint split_counter(uint r, uint h) {
  return pc.base[KVB] + KV_WORDS_PER_SLOT * pc.cap + SPLIT_ROWS * H * MAX_SPLITS * (HD + 2u) + r * H + h;
}
void combine_splits(uint r, uint h, uint splits);
// The partials one workgroup writes and another reads within a launch: plain loads and stores of the coherent
// buffer, ordered by the counter's atomic.
void put_part(uint at, uint v) { kv[at] = v; }
uint get_part(uint at) { return kv[at]; }
#if ROPE
shared float ks[512];
#endif
vec2 key2(uint g, uint j, uint d) {
  if (j < POS) return kv_get2((g * pc.cap + j % pc.cap) * HD + d);
#if ROPE
  // A one-row launch: the row's own key, rotated.
  return vec2(ks[d], ks[d + 1u]);
#endif
  uint ra = pc.base[KB] + (j - POS) * KVH * HD + g * HD + d;
  return vec2(k[ra], k[ra + 1u]);
}
vec2 value2(uint g, uint j, uint d) {
  if (j < POS) return kv_get2(KVH * pc.cap * HD + (g * pc.cap + j % pc.cap) * HD + d);
  uint ra = pc.base[VB] + (j - POS) * KVH * HD + g * HD + d;
  return vec2(v[ra], v[ra + 1u]);
}
void attend_split() {
  uint h = gl_WorkGroupID.x, r = gl_WorkGroupID.y, z = gl_WorkGroupID.z, splits = gl_NumWorkGroups.z;
#if SG_SPLIT
  // Counted subgroup by subgroup, so that a key's four threads share a subgroup whatever order the device
  // numbers its invocations in.
  uint lane = gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
#else
  uint lane = gl_LocalInvocationID.x;
#endif
  uint g = h / (H / KVH), p = POS + r;
  uint first = (WINDOW != 0u && p + 1u > WINDOW) ? p + 1u - WINDOW : 0u;
  uint per = (p + 1u - first + splits - 1u) / splits;
  uint lo = first + z * per, hi = min(lo + per, p + 1u);
  uint qa = pc.base[QB] + r * H * HD + h * HD;
#if ROPE
  // The head's query and the row's key rotated to position p (rotate-half: dimension f < HD / 2 pairs with
  // f + HD / 2), the key kept in ks for the row's own score and the append.
  uint ka = pc.base[KB] + r * KVH * HD + g * HD;
  for (uint d = lane; d < HD; d += 256u) {
    uint f = d % (HD / 2u);
    float angle = float(p) * uintBitsToFloat(INV_FREQ[f]), c = cos(angle), sn = sin(angle);
    float q0 = q[qa + f], q1 = q[qa + f + HD / 2u], k0 = k[ka + f], k1 = k[ka + f + HD / 2u];
    qs[d] = d < HD / 2u ? q0 * c - q1 * sn : q1 * c + q0 * sn;
    ks[d] = d < HD / 2u ? k0 * c - k1 * sn : k1 * c + k0 * sn;
  }
  barrier();
#else
  for (uint d = lane; d < HD; d += 256u) qs[d] = q[qa + d];
#endif
  // The row's key and value into the cache, by the first range of the group's first head: the slot it takes
  // holds no position any row of a one-row launch sees.
  if (z == 0u && h % (H / KVH) == 0u)
    for (uint d = 2u * lane; d < HD; d += 512u) {
      uint src = r * KVH * HD + g * HD + d, dst = (g * pc.cap + p % pc.cap) * HD + d;
#if ROPE
      kv_put2(dst, ks[d], ks[d + 1u]);
#else
      kv_put2(dst, k[pc.base[KB] + src], k[pc.base[KB] + src + 1u]);
#endif
      kv_put2(KVH * pc.cap * HD + dst, v[pc.base[VB] + src], v[pc.base[VB] + src + 1u]);
    }
  uint key = lane / 4u, quarter = lane % 4u, pair = lane % PAIRS, sub = lane / PAIRS;
  float m = uintBitsToFloat(0xff7fffffu), l = 0.0;
  vec2 acc = vec2(0.0);
  barrier();
#if SG_SPLIT
  // One barrier a chunk: a key's four threads add their score shares by shuffles, each subgroup takes the
  // maximum of its keys by shuffles, and the scores and maxima go to shared memory in the buffers of the
  // chunk's parity (a thread writes a buffer again only after the next chunk's barrier, which every reader of
  // its previous contents has passed). Each thread then folds its keys' values with the weights it computes
  // itself and keeps its own share `lp` of the sum of weights, rescaled with the values; the shares meet at
  // the end.
  float lp = 0.0;
  uint par = 0u;
  for (uint j0 = lo; j0 < hi; j0 += SPLIT_KEYS, par ^= 1u) {
    uint j = j0 + key;
    float s = 0.0;
    if (j < hi)
      for (uint d = 2u * quarter; d < HD; d += 8u) { vec2 kk = key2(g, j, d); s += qs[d] * kk.x + qs[d + 1u] * kk.y; }
    s += subgroupShuffleXor(s, 1u);
    s += subgroupShuffleXor(s, 2u);
    s = j < hi ? s * SCALE : uintBitsToFloat(0xff7fffffu);
    if (quarter == 0u) sps[par * SPLIT_KEYS + key] = s;
    float mx = s;
    for (uint h2 = 4u; h2 < gl_SubgroupSize; h2 <<= 1u) mx = max(mx, subgroupShuffleXor(mx, h2));
    if (gl_SubgroupInvocationID == 0u) smx[par * 64u + gl_SubgroupID] = mx;
    barrier();
    float mn = m;
    for (uint i = 0u; i < gl_NumSubgroups; i++) mn = max(mn, smx[par * 64u + i]);
    float corr = exp(m - mn);
    acc *= corr;
    lp *= corr;
    uint count = min(SPLIT_KEYS, hi - j0);
    if (sub < SUBSETS)
      for (uint t = sub; t < SPLIT_KEYS; t += SUBSETS)
        if (t < count) { float p = exp(sps[par * SPLIT_KEYS + t] - mn); acc += p * value2(g, j0 + t, 2u * pair); lp += p; }
    m = mn;
  }
  if (pair == 0u && sub < SUBSETS) lsub[sub] = lp;
  barrier();
  for (uint t = 0u; t < SUBSETS; t++) l += lsub[t];
#else
  for (uint j0 = lo; j0 < hi; j0 += SPLIT_KEYS) {
    uint j = j0 + key;
    float s = 0.0;
    if (j < hi)
      for (uint d = 2u * quarter; d < HD; d += 8u) { vec2 kk = key2(g, j, d); s += qs[d] * kk.x + qs[d + 1u] * kk.y; }
    part[lane] = s;
    barrier();
    if (lane < SPLIT_KEYS)
      ps[lane] = j0 + lane < hi ? (part[4u * lane] + part[4u * lane + 1u] + part[4u * lane + 2u] + part[4u * lane + 3u]) * SCALE
                                : uintBitsToFloat(0xff7fffffu);
    barrier();
    float mn = m;
    for (uint t = 0u; t < SPLIT_KEYS; t++) mn = max(mn, ps[t]);
    barrier();
    if (lane < SPLIT_KEYS) ps[lane] = j0 + lane < hi ? exp(ps[lane] - mn) : 0.0;
    barrier();
    float corr = exp(m - mn), sum = 0.0;
    for (uint t = 0u; t < SPLIT_KEYS; t++) sum += ps[t];
    l = l * corr + sum;
    acc *= corr;
    uint count = min(SPLIT_KEYS, hi - j0);
    // A constant trip count, so that the compiler can put every value's load in flight at once.
    if (sub < SUBSETS)
      for (uint t = sub; t < SPLIT_KEYS; t += SUBSETS)
        if (t < count) acc += ps[t] * value2(g, j0 + t, 2u * pair);
    m = mn;
    barrier();
  }
#endif
  if (sub < SUBSETS) { vpart[2u * (sub * PAIRS + pair)] = acc.x; vpart[2u * (sub * PAIRS + pair) + 1u] = acc.y; }
  barrier();
  vec2 o = vec2(0.0);
  if (lane < PAIRS)
    for (uint t = 0u; t < SUBSETS; t++) o += vec2(vpart[2u * (t * PAIRS + lane)], vpart[2u * (t * PAIRS + lane) + 1u]);
  if (splits == 1u) {
    if (lane >= PAIRS) return;
    uint ya = pc.base[YB] + r * H * HD + h * HD + 2u * lane;
    y[ya] = o.x / l;
    y[ya + 1u] = o.y / l;
    return;
  }
  uint at = split_at(r, h, z, splits);
  if (lane == 0u) { put_part(at, floatBitsToUint(m)); put_part(at + 1u, floatBitsToUint(l)); }
  if (lane < PAIRS) { put_part(at + 2u + 2u * lane, floatBitsToUint(o.x)); put_part(at + 3u + 2u * lane, floatBitsToUint(o.y)); }
  // The last range of the head to finish (its counter says which) combines them all, and leaves the counter
  // at zero for the next launch.
  memoryBarrierBuffer();
  barrier();
  uint counter = split_counter(r, h);
  if (lane == 0u) last_range = atomicAdd(kv[counter], 1u) == splits - 1u;
  barrier();
  if (!last_range) return;
  memoryBarrierBuffer();
  combine_splits(r, h, splits);
  if (lane == 0u) atomicExchange(kv[counter], 0u);
}
void combine_splits(uint r, uint h, uint splits) {
  uint lane = gl_LocalInvocationID.x;
  // Thread z < splits takes range z's maximum and sum, then its weight exp(max_z - max) and weighted sum.
  if (lane < splits) {
    uint at = split_at(r, h, lane, splits);
    zw[lane] = uintBitsToFloat(get_part(at));
    zl[lane] = uintBitsToFloat(get_part(at + 1u));
  }
  barrier();
  float mx = uintBitsToFloat(0xff7fffffu), l = 0.0;
  for (uint z = 0u; z < splits; z++) mx = max(mx, zw[z]);
  barrier();
  if (lane < splits) {
    zw[lane] = exp(zw[lane] - mx);
    zl[lane] *= zw[lane];
  }
  barrier();
  for (uint z = 0u; z < splits; z++) l += zl[z];
  // Thread (lane / DL, lane % DL) sums dimension d of every ZS-th range from lane / DL, all its loads in flight
  // at once (a constant trip count), and the ZS sums of a dimension meet in shared memory.
  const uint DL = HD < 256u ? HD : 256u, ZS = 256u / DL;
  uint ya = pc.base[YB] + r * H * HD + h * HD, zq = lane / DL;
  for (uint d0 = 0u; d0 < HD; d0 += DL) {
    uint d = d0 + lane % DL;
    float o = 0.0;
    for (uint i = 0u; i < (MAX_SPLITS + ZS - 1u) / ZS; i++) {
      uint z = zq + i * ZS;
      if (zq < ZS && z < splits && d < HD) o += zw[z] * uintBitsToFloat(get_part(split_at(r, h, z, splits) + 2u + d));
    }
    vpart[lane] = o;
    barrier();
    if (lane < DL && d < HD) {
      float sum = 0.0;
      for (uint q = 0u; q < ZS; q++) sum += vpart[q * DL + lane];
      y[ya + d] = sum / l;
    }
    barrier();
  }
}
";

#[cfg(test)]
mod tests;
