//! Seeded random damage of the TensorFlow fixtures (bit flips anywhere or in the footers, bytes
//! overwritten, truncations, garbage, emptied or missing files) pushed through the whole load, as a
//! trainer runs it: the variables are made from the intact checkpoint (the model does not change
//! with the file), then `init_from_checkpoint` and `initialize` read the damaged one, copying the
//! values or mapping them copy-on-write, into variables laid out as stored, whole, and
//! re-partitioned along two axes. Each load must end in an error that names the damaged
//! checkpoint's file and leaves nothing initialized, or in exactly the values of the intact
//! checkpoint: never a panic, never a silently wrong value.

use tfckpt::{Device, LoadOptions, VariableStore};

mod common;
use common::damage::{damaged_copy, Outcomes};
use common::fixtures::fixture;
use common::layouts::{store_for_layout, try_store_for_layout_from, Layout, CASES};

/// Damaged checkpoints per case and configuration.
const ITERATIONS: usize = 60;

/// The first variable of `want` whose value `got` lacks or holds differently.
fn first_difference(want: &VariableStore, got: &VariableStore) -> Option<String> {
    want.variables()
        .map(|v| v.name.clone())
        .find(|name| got.value(name) != want.value(name))
}

#[test]
fn damaged_checkpoints_load_exactly_or_fail_whole() {
    let configs = [
        ("re-partitioned, copied", Layout::Repartitioned, false),
        ("as stored, copied", Layout::AsStored, false),
        ("as stored, mapped copy-on-write", Layout::AsStored, true),
    ];
    let mut outcomes = Outcomes::default();
    for (ci, case) in CASES.iter().enumerate() {
        for (k, &(what, layout, map_values)) in configs.iter().enumerate() {
            let options = LoadOptions {
                map_values,
                map_min_bytes: Some(1),
                ..Default::default()
            };
            let intact = fixture(case);
            let mut want = store_for_layout(&intact, layout);
            want.initialize_with(Device::Cpu, &options)
                .unwrap_or_else(|e| panic!("{case}, {what}, intact: {e}"));
            for it in 0..ITERATIONS {
                let seed = (ci as u64) << 40 | (k as u64) << 32 | it as u64 | 1 << 63;
                let tmp = tempfile::tempdir().unwrap();
                let (damaged, done) = damaged_copy(&intact, tmp.path(), seed);
                let context = format!("{case}, {what}: {done}");
                let tmp_dir = tmp.path().to_string_lossy().into_owned();
                outcomes.run(&context, || {
                    // Every error names the damaged checkpoint's file.
                    let named = |e: &tfckpt::Error| e.to_string().contains(tmp_dir.as_str());
                    let mut got = match try_store_for_layout_from(&intact, &damaged, layout) {
                        Ok(store) => store,
                        Err(e) if named(&e) => return Ok(false),
                        Err(e) => return Err(format!("an error that does not name the file: {e}")),
                    };
                    if let Err(e) = got.initialize_with(Device::Cpu, &options) {
                        if !named(&e) {
                            return Err(format!("an error that does not name the file: {e}"));
                        }
                        // All or nothing: a failed load leaves no value behind.
                        if got.is_initialized()
                            || want.variables().any(|v| got.value(&v.name).is_some())
                        {
                            return Err("a failed load left values behind".to_string());
                        }
                        return Ok(false);
                    }
                    match first_difference(&want, &got) {
                        Some(name) => Err(format!("silently wrong value of {name}")),
                        None => Ok(true),
                    }
                });
            }
        }
    }
    eprintln!("damaged loads: {outcomes:?} (failed whole, gave exactly the intact values)");
    // Both outcomes occur: damage the load never reads (a tensor no variable takes, padding) is
    // harmless; the rest must be refused.
    assert!(outcomes.failed > 500 && outcomes.exact > 50, "{outcomes:?}");
}
