//! The container image builds: its dependency layer stubs every target Cargo.toml declares
//! (a missing stub fails `docker build` before any code compiles, as it did once for
//! `benches/backfill.rs`).

#[test]
fn the_dockerfile_stubs_every_bench_target() {
    let manifest = std::fs::read_to_string("Cargo.toml").unwrap();
    let dockerfile = std::fs::read_to_string("Dockerfile").unwrap();
    let benches: Vec<&str> = manifest
        .split("[[bench]]")
        .skip(1)
        .filter_map(|section| {
            section
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|name| name.trim_matches('"'))
        })
        .collect();
    assert!(!benches.is_empty(), "no [[bench]] found in Cargo.toml");
    for bench in benches {
        assert!(
            dockerfile.contains(&format!("> benches/{bench}.rs")),
            "the Dockerfile's dependency layer has no stub for benches/{bench}.rs"
        );
    }
}
