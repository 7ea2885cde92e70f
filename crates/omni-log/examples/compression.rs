//! Whether compressing payloads pays for small records: compresses the
//! payloads of N realistic records (see `benches/support/events.rs`) with
//! zstd, without a dictionary and with dictionaries trained on the first
//! records, and reports bytes per payload and CPU per compression and
//! decompression.
//!
//!   cargo run --release -p omni-log --example compression -- [N] [words|x]

mod support;

use std::time::{Duration, Instant};

use zstd::{
    dict::{DecoderDictionary, EncoderDictionary},
    zstd_safe::{CCtx, CParameter, DCtx},
};

struct Outcome {
    bytes: f64,
    compress: Duration,
    decompress: Duration,
}

/// CPU time of the calling thread (schedstat's first field), so that other
/// load on the machine does not count.
fn thread_cpu() -> Duration {
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn run(payloads: &[Vec<u8>], level: i32, dictionary: Option<&[u8]>) -> Outcome {
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::ChecksumFlag(false)).unwrap();
    cctx.set_parameter(CParameter::DictIdFlag(false)).unwrap();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .unwrap();
    let mut dctx = DCtx::create();
    let cdict = dictionary.map(|d| EncoderDictionary::copy(d, level));
    let ddict = dictionary.map(DecoderDictionary::copy);
    let mut compressed = Vec::with_capacity(payloads.len());
    // Passes enough for the thread's CPU time to be read to ~1%.
    const PASSES: usize = 5;
    let started = thread_cpu();
    for pass in 0..PASSES {
        compressed.clear();
        let _ = pass;
        for payload in payloads {
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(payload.len()));
            // As the log does it: the prepared dictionary referenced, frame
            // parameters from the context (no dictionary id, no checksum).
            if let Some(cdict) = &cdict {
                cctx.ref_cdict(cdict.as_cdict()).unwrap();
            }
            cctx.compress2(&mut out, payload).unwrap();
            cctx.disable_dictionary().unwrap();
            compressed.push(out);
        }
    }
    let compress = (thread_cpu() - started) / PASSES as u32;
    let started = thread_cpu();
    for _ in 0..PASSES {
        let mut out = Vec::with_capacity(64 * 1024);
        for (c, payload) in compressed.iter().zip(payloads) {
            out.clear();
            match &ddict {
                Some(ddict) => dctx.decompress_using_ddict(&mut out, c, ddict.as_ddict()),
                None => dctx.decompress(&mut out, c),
            }
            .unwrap();
            assert_eq!(&out, payload);
        }
    }
    let decompress = (thread_cpu() - started) / PASSES as u32;
    // The 4-byte frame magic is the same in every frame: a store can drop it.
    let bytes =
        compressed.iter().map(|c| c.len() - 4).sum::<usize>() as f64 / payloads.len() as f64;
    Outcome {
        bytes,
        compress,
        decompress,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n, kind, _) = support::args()?;
    let payloads: Vec<Vec<u8>> = support::records(n, kind)
        .map(|record| record.payload.to_vec())
        .collect();
    let raw = payloads.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    println!("{n} payloads of {kind:?} text, {raw:.1} bytes each");
    let per = |d: Duration, count: usize| d.as_nanos() as f64 / 1000.0 / count as f64;

    let report = |name: &str, train: usize, payloads: &[Vec<u8>], dictionary: Option<&[u8]>| {
        for level in [-5, -1, 1, 3] {
            let outcome = run(payloads, level, dictionary);
            println!(
                "  {name:<34} train {train:>5} level {level}: {:>6.1} bytes ({:>5.1}%), compress {:>5.2} µs, decompress {:>5.2} µs",
                outcome.bytes,
                100.0 * outcome.bytes / raw,
                per(outcome.compress, payloads.len()),
                per(outcome.decompress, payloads.len())
            );
        }
    };
    // Measured on records the dictionary was not trained on.
    let test = &payloads[payloads.len() / 2..];
    report("no dictionary", 0, test, None);
    for (train, size) in [
        (200, 4096),
        (1000, 8192),
        (1000, 16_384),
        (5000, 16_384),
        (5000, 65_536),
    ] {
        let started = Instant::now();
        let dictionary = zstd::dict::from_samples(&payloads[..train], size)?;
        let trained = started.elapsed();
        report(
            &format!(
                "trained {size} B ({:.0} ms)",
                trained.as_secs_f64() * 1000.0
            ),
            train,
            test,
            Some(&dictionary),
        );
    }
    for train in [50, 200] {
        // A raw-content dictionary: earlier payloads, concatenated.
        let dictionary: Vec<u8> = payloads[..train].concat();
        report(
            &format!("raw {} B", dictionary.len()),
            train,
            test,
            Some(&dictionary),
        );
    }
    Ok(())
}
