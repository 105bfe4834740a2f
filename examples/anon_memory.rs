//! Measures anonymous memory during a load: the destination bytes versus the peak `RssAnon` of this
//! process (sampled from the progress callback and at the end; Linux only). File-backed pages of the
//! mapped checkpoint are page cache, not anonymous memory, and are not counted.
//!
//! `cargo run --release --example anon_memory -- CKPT MODEL.json MAP.json [--map]`
//! (with no arguments it writes and loads a 2 GiB checkpoint of 128 x 16 MiB tensors). By default
//! every value is copied into fresh memory, and the overhead above the destination bytes is what
//! the load itself uses; with `--map` large values are copy-on-write mappings of the checkpoint (no
//! anonymous memory at all). It then times a first write to every page of every value (what
//! copy-on-write defers to the trainer's first update).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[allow(dead_code)] // shared with the binary: only part of it is used here
#[path = "../src/bin/tfckpt/model_json.rs"]
mod model_json;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, CheckpointWriter, DType, Device, Init, LoadOptions,
    Target, TensorRef, VariableStore,
};

fn rss_anon() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--map").collect();
    let tmp = tempfile::tempdir()?;
    let (ckpt, mut store, map) = if let [ckpt, model, map] = &args[..] {
        let store = model_json::parse_model(&std::fs::read_to_string(model)?)?;
        let map = if map.starts_with('{') {
            model_json::parse_map(map)?
        } else {
            model_json::parse_map(&std::fs::read_to_string(map)?)?
        };
        (std::path::PathBuf::from(ckpt), store, map)
    } else {
        let prefix = tmp.path().join("ckpt");
        let mut w = CheckpointWriter::create(&prefix, Default::default())?;
        let data = vec![7u8; 16 << 20];
        let mut store = VariableStore::new();
        for i in 0..128 {
            w.add(
                &format!("model/t{i:03}"),
                TensorRef::Bytes {
                    dtype: DType::F32,
                    shape: &[4 << 20],
                    data: &data,
                },
            )?;
            store.get_variable(&format!("new/t{i:03}"), &[4 << 20], DType::F32, Init::Zeros)?;
        }
        w.finish()?;
        (
            prefix,
            store,
            AssignmentMap::from([("model/", Target::scope("new/"))]),
        )
    };
    let before = rss_anon();
    init_from_checkpoint(&mut store, &ckpt, &map)?;
    let peak = Arc::new(AtomicU64::new(rss_anon()));
    let p = peak.clone();
    let mut options = LoadOptions::new().progress(move |_| {
        p.fetch_max(rss_anon(), Ordering::Relaxed);
    });
    options.map_values = std::env::args().any(|a| a == "--map");
    let report = store.initialize_with(Device::Cpu, &options)?;
    peak.fetch_max(rss_anon(), Ordering::Relaxed);
    // Bytes of values held in anonymous memory (mapped values live in the page cache).
    let dest: u64 = report.bytes - report.mapped_bytes;
    let over = peak.load(Ordering::Relaxed).saturating_sub(before) as i64 - dest as i64;
    println!(
        "destination bytes in anonymous memory {:.1} MiB; peak anonymous memory above the start {:.1} MiB; overhead {:.1} MiB ({report})",
        dest as f64 / 1048576.0,
        (peak.load(Ordering::Relaxed) - before) as f64 / 1048576.0,
        over as f64 / 1048576.0
    );
    // What a trainer's first update costs afterwards: one write per 4 KiB page of every value
    // (a mapped page is copied on its first write; a copied value's pages are already private).
    let names: Vec<String> = store.variables().map(|v| v.name.clone()).collect();
    let t = std::time::Instant::now();
    let mut pages = 0u64;
    for n in &names {
        if let Some(tfckpt::TensorData::Bytes(b)) = store.value_mut(n).map(|t| &mut t.data) {
            for i in (0..b.len()).step_by(4096) {
                b[i] = b[i].wrapping_add(1);
                pages += 1;
            }
        }
    }
    println!(
        "first write to every page afterwards: {pages} pages in {:.3} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
