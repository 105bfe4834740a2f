//! The example from TensorFlow's `init_from_checkpoint` documentation, in Rust: a checkpoint with
//! `old_scope_1/var1 [20,2]`, `old_scope_1/var2 [50,4]`, `old_scope_2/var3 [100,100]`; a model with
//! `new_scope_1/var1`, `new_scope_2/var2` and a 5-part `new_scope_2/var3`; the five assignment-map
//! forms of the documentation. Run: `cargo run --example seed_example`.

use tfckpt::{
    init_from_checkpoint, AssignmentMap, CheckpointWriter, DType, Device, Init, Target, Tensor,
    VariableStore,
};

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| seed + i as f32 / 1000.0).collect()
}

fn model() -> tfckpt::Result<VariableStore> {
    let mut store = VariableStore::new();
    store.get_variable("new_scope_1/var1", &[20, 2], DType::F32, Init::Zeros)?;
    store.get_variable("new_scope_2/var2", &[50, 4], DType::F32, Init::Zeros)?;
    // Partitioned into 5 variables along the first axis.
    store.get_partitioned_variable(
        "new_scope_2/var3",
        &[100, 100],
        DType::F32,
        &[5, 1],
        Init::Zeros,
    )?;
    Ok(store)
}

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Say, model.ckpt has the following tensors (written here with tfckpt's writer).
    let dir = tempfile::tempdir()?;
    let ckpt = dir.path().join("model.ckpt");
    let mut w = CheckpointWriter::create(&ckpt, Default::default())?;
    w.add(
        "old_scope_1/var1",
        (&Tensor::from_f32(&[20, 2], &values(40, 1.0)).unwrap()).into(),
    )?;
    w.add(
        "old_scope_1/var2",
        (&Tensor::from_f32(&[50, 4], &values(200, 2.0)).unwrap()).into(),
    )?;
    w.add(
        "old_scope_2/var3",
        (&Tensor::from_f32(&[100, 100], &values(10_000, 3.0)).unwrap()).into(),
    )?;
    w.finish()?;

    let forms: [(&str, AssignmentMap); 5] = [
        // Initialize all variables in `new_scope_1` from `old_scope_1`.
        (
            "scope",
            AssignmentMap::from([("old_scope_1/", Target::scope("new_scope_1"))]),
        ),
        // Use names to specify which variables to initialize from checkpoint.
        (
            "names",
            AssignmentMap::from([
                ("old_scope_1/var1", "new_scope_1/var1"),
                ("old_scope_1/var2", "new_scope_2/var2"),
            ]),
        ),
        // Or use variable objects to identify what to initialize.
        (
            "objects",
            AssignmentMap::from([
                ("old_scope_1/var1", Target::variable("new_scope_1/var1")),
                ("old_scope_1/var2", Target::variable("new_scope_2/var2")),
            ]),
        ),
        // Initialize partitioned variables using the variable's name.
        (
            "partitioned name",
            AssignmentMap::from([("old_scope_2/var3", "new_scope_2/var3")]),
        ),
        // Or specify the list of part variables.
        (
            "part list",
            AssignmentMap::from([(
                "old_scope_2/var3",
                Target::parts((0..5).map(|i| format!("new_scope_2/var3/part_{i}"))),
            )]),
        ),
    ];
    for (form, map) in forms {
        let mut store = model()?;
        let call = init_from_checkpoint(&mut store, &ckpt, &map)?; // validates and records; reads no tensor bytes
        let report = store.initialize(Device::Cpu)?; // loads now
        println!(
            "{form:>16}: {} assignments; {report}",
            call.assignments.len()
        );
        for a in &call.assignments {
            let got = store.value(&a.variable).unwrap().to_f32().unwrap();
            let full = tfckpt::Checkpoint::open(&ckpt)?
                .read_slice(&a.tensor, &a.slice)?
                .to_f32()
                .unwrap();
            assert_eq!(got, full, "{} <- {} {}", a.variable, a.tensor, a.slice);
            println!("{:>18}{} <- {} [{}]", "", a.variable, a.tensor, a.slice);
        }
    }
    Ok(())
}
