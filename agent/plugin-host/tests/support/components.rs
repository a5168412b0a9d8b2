//! Locating the components `cargo xtask test` builds (dev profile, wasm32-wasip2).

use std::path::PathBuf;

/// `<target>/wasm32-wasip2/debug/<name>.wasm`, found from the running test or bench executable
/// (`<target>/<profile>/deps/<exe>`).
pub fn component(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let target = exe.ancestors().nth(3).expect("target directory");
    let path = target
        .join("wasm32-wasip2/debug")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask test` (it builds the plugins)",
        path.display()
    );
    path
}
