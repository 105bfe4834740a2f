//! The example programs run as tests, so they cannot rot.

#[path = "../examples/seed_example.rs"]
mod seed_example;

#[test]
fn seed_example_runs() {
    seed_example::main().unwrap();
}
