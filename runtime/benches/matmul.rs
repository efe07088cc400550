//! Matmul throughput and tile tuning, outside the test suite (timings are never asserted).
//!
//! ```text
//! cargo bench -p unicorn-runtime --bench matmul                 # throughput per ISA x format x shape
//! cargo bench -p unicorn-runtime --bench matmul -- tiles        # tile shapes compared, interleaved rounds
//! ```
//! `UNICORN_BENCH=<substring>` keeps the matching throughput lines only (e.g. `avx2 q4_0`). "cold" GEMVs rotate
//! over enough copies of the matrix (256 MiB) to overflow the L3, as a real model's layers do; "hot" ones reuse
//! one matrix, which may then sit in L3. With one thread the time is the thread's CPU time, which stays
//! meaningful when other processes share the machine; `--threads` is taken from `UNICORN_THREADS` (default: all
//! cores). For `tiles`: `UNICORN_TILES=4x2,4x3` picks the shapes, `UNICORN_TUNE=rows,n,k` the problem.

use std::time::Instant;
use unicorn_ir::quant::{encode_row, interleave_rows, WeightLayout, INTERLEAVE};
use unicorn_ir::WeightFormat;
use unicorn_runtime::cpu::isa::Isa;
use unicorn_runtime::cpu::matmul::{matmul_with, matmul_with_tile, Scratch, WeightRef};
use unicorn_runtime::cpu::pool;

use unicorn_ir::rng::XorShift as Rng;

/// The layout the CPU target stores `format` in.
fn layout_of(format: WeightFormat) -> WeightLayout {
    if format.is_quantized() {
        WeightLayout::Interleaved8
    } else {
        WeightLayout::Rows
    }
}

/// A random `n x k` matrix stored as a plan stores it (interleaved and padded for q8_0 / q4_0).
fn matrix(rng: &mut Rng, format: WeightFormat, n: usize, k: usize) -> Vec<u8> {
    let mut rows = Vec::new();
    for row in rng.vec(n * k, 1.0).chunks(k) {
        encode_row(format, row, &mut rows);
    }
    if !format.is_quantized() {
        return rows;
    }
    let group = INTERLEAVE * format.row_bytes(k).expect("whole blocks");
    rows.resize(rows.len().next_multiple_of(group), 0);
    let mut out = Vec::with_capacity(rows.len());
    for g in rows.chunks(group) {
        interleave_rows(format, k, g, &mut out);
    }
    out
}

fn cpu_time(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn available_isas() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.available()).collect()
}

fn throughput() {
    let filter = std::env::var("UNICORN_BENCH").unwrap_or_default();
    let mut rng = Rng(1);
    let mut scratch = Scratch::default();
    let threads = pool::threads();
    println!("isa detected: {}, threads: {threads}", Isa::detect().name());
    let shapes = [
        (1, 2048, 2048, false),
        (1, 8192, 2048, false),
        (1, 2048, 8192, false),
        (1, 2048, 8192, true),
        (1, 8192, 2048, true),
        // A server's decode step over two and four sequences (hot: the compute alone, the weights in cache).
        (2, 8192, 2048, true),
        (4, 8192, 2048, false),
        (4, 8192, 2048, true),
        (4, 2048, 8192, true),
        (128, 2048, 2048, false),
    ];
    for isa in available_isas() {
        for format in WeightFormat::ALL {
            let layout = layout_of(format);
            for (rows, n, k, cold) in shapes {
                let label = format!(
                    "{:8} {:5} {:12} rows={rows:4} n={n:5} k={k:5} {:4}",
                    isa.name(),
                    format.name(),
                    layout.name(),
                    if cold { "cold" } else { "hot" }
                );
                if !label.contains(&filter) || (isa == Isa::Portable && rows > 1) {
                    continue;
                }
                let data = matrix(&mut rng, format, n, k);
                let one = data.len();
                let copies = if cold { ((256 << 20) / one).max(2) } else { 1 };
                let all: Vec<u8> = data.iter().copied().cycle().take(one * copies).collect();
                let x = rng.vec(rows * k, 1.0);
                let mut y = vec![0.0; rows * n];
                let mut c = 0;
                let mut call = || {
                    let w = WeightRef { format, layout, n, k, data: &all[c * one..(c + 1) * one] };
                    matmul_with(isa, &x, rows, w, None, &mut y, &mut scratch);
                    c = (c + 1) % copies;
                };
                call();
                // Best of several ~30 ms batches: other processes on the machine only slow a run down.
                let (mut wall, mut cpu, mut busy) = (f64::MAX, f64::MAX, 0.0f64);
                for _ in 0..8 {
                    let (start, cpu0, proc0) = (
                        Instant::now(),
                        cpu_time(libc::CLOCK_THREAD_CPUTIME_ID),
                        cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID),
                    );
                    let mut iters = 0;
                    while start.elapsed().as_secs_f64() < 0.03 || iters < 2 {
                        call();
                        iters += 1;
                    }
                    let n = f64::from(iters);
                    let elapsed = start.elapsed().as_secs_f64();
                    if elapsed / n < wall {
                        busy = (cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID) - proc0) / elapsed;
                    }
                    wall = wall.min(elapsed / n);
                    cpu = cpu.min((cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0) / n);
                }
                let t = if threads == 1 { cpu } else { wall };
                println!(
                    "{label}: {:9.1} us {:7.1} GFLOP/s {:6.1} GB/s{}",
                    t * 1e6,
                    2.0 * (rows * n * k) as f64 / t / 1e9,
                    one as f64 / t / 1e9,
                    if threads == 1 {
                        format!("  (thread CPU time; wall {:.1} us)", wall * 1e6)
                    } else {
                        format!("  (wall; {busy:.1} cores busy)")
                    },
                );
            }
        }
    }
}

fn tiles() {
    let shapes: Vec<(usize, usize)> = match std::env::var("UNICORN_TILES") {
        Ok(v) => v
            .split(',')
            .map(|t| t.split_once('x').expect("UNICORN_TILES: RxC,..."))
            .map(|(r, c)| (r.parse().expect("tile rows"), c.parse().expect("tile columns")))
            .collect(),
        Err(_) => vec![(4, 2), (4, 3), (2, 4), (3, 3), (1, 1), (1, 4)],
    };
    let p: Vec<usize> = std::env::var("UNICORN_TUNE")
        .unwrap_or("64,512,2048".into())
        .split(',')
        .map(|v| v.parse().expect("UNICORN_TUNE: rows,n,k"))
        .collect();
    let (rows, n, k) = (p[0], p[1], p[2]);
    let mut rng = Rng(3);
    let mut scratch = Scratch::default();
    for format in WeightFormat::ALL {
        let layout = layout_of(format);
        // Interleaved tiles are one group of 8 weight rows wide.
        let mine: Vec<(usize, usize)> =
            shapes.iter().copied().filter(|&(_, c)| !format.is_quantized() || c == 1).collect();
        let data = matrix(&mut rng, format, n, k);
        let one = data.len();
        let copies = if rows == 1 { ((256 << 20) / one).max(2) } else { 1 };
        let all: Vec<u8> = data.iter().copied().cycle().take(one * copies).collect();
        let x = rng.vec(rows * k, 1.0);
        let mut y = vec![0.0; rows * n];
        let mut best = vec![f64::MAX; mine.len()];
        let mut c = 0;
        for _ in 0..15 {
            for (s, &tile) in mine.iter().enumerate() {
                let start = Instant::now();
                let reps = 4;
                for _ in 0..reps {
                    let w = WeightRef { format, layout, n, k, data: &all[c * one..(c + 1) * one] };
                    matmul_with_tile(Isa::detect(), tile, &x, rows, w, &mut y, &mut scratch);
                    c = (c + 1) % copies;
                }
                best[s] = best[s].min(start.elapsed().as_secs_f64() / f64::from(reps));
            }
        }
        let line: Vec<String> = mine
            .iter()
            .zip(&best)
            .map(|((r, c), t)| {
                format!(
                    "{r}x{c} {:5.1} GFLOP/s {:5.1} GB/s",
                    2.0 * (rows * n * k) as f64 / t / 1e9,
                    one as f64 / t / 1e9
                )
            })
            .collect();
        println!("{:5} {rows}x{n}x{k} threads={}: {}", format.name(), pool::threads(), line.join(" | "));
    }
}

fn main() {
    if let Ok(t) = std::env::var("UNICORN_THREADS") {
        pool::set_threads(t.parse().expect("UNICORN_THREADS: a thread count"));
    }
    // `cargo bench` passes `--bench`; the first other argument picks the benchmark.
    match std::env::args().skip(1).find(|a| !a.starts_with("--")).as_deref() {
        None | Some("throughput") => throughput(),
        Some("tiles") => tiles(),
        Some(other) => {
            eprintln!("matmul bench: unknown benchmark '{other}' (throughput or tiles)");
            std::process::exit(2);
        }
    }
}
