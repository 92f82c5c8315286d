//! Placeholder until the store's open path lands (issue 2).
fn main() {}
