//! Times each phase of loading 100k small tensors (a profiling aid for the per-tensor overhead):
//! `cargo run --release --example profile_small`.

use std::time::Instant;

use tfckpt::{
    init_from_checkpoint, AssignmentMap, CheckpointWriter, DType, Device, Init, Target, TensorRef,
    VariableStore,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = 100_000;
    let dir = tempfile::tempdir()?;
    let prefix = dir.path().join("small");
    let mut w = CheckpointWriter::create(&prefix, Default::default())?;
    let data = vec![1u8; 256];
    for i in 0..n {
        w.add(
            &format!("model/t_{i:06}"),
            TensorRef::Bytes {
                dtype: DType::F32,
                shape: &[64],
                data: &data,
            },
        )?;
    }
    w.finish()?;
    for _ in 0..3 {
        let t0 = Instant::now();
        let mut store = VariableStore::new();
        for i in 0..n {
            store.get_variable(&format!("new/t_{i:06}"), &[64], DType::F32, Init::Zeros)?;
        }
        let t1 = Instant::now();
        init_from_checkpoint(
            &mut store,
            &prefix,
            &AssignmentMap::from([("model/", Target::scope("new/"))]),
        )?;
        let t2 = Instant::now();
        let r = store.initialize(Device::Cpu)?;
        let t3 = Instant::now();
        let ck = tfckpt::Checkpoint::open(&prefix)?;
        let t4 = Instant::now();
        println!(
            "store {:.1} ms, call {:.1} ms, initialize {:.1} ms ({} tensors), open alone {:.1} ms; total {:.2} us/tensor",
            (t1 - t0).as_secs_f64() * 1e3,
            (t2 - t1).as_secs_f64() * 1e3,
            (t3 - t2).as_secs_f64() * 1e3,
            r.tensors,
            (t4 - t3).as_secs_f64() * 1e3,
            (t3 - t0).as_secs_f64() * 1e6 / n as f64
        );
        drop(ck);
    }
    Ok(())
}
