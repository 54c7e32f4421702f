//! The `dagflow` binary.
fn main() {}
