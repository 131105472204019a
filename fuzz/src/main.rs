//! One AFL++ harness for every fuzz target in `nodetap::fuzzing::TARGETS`.
//!
//!     nodetap-fuzz list                 print the target names, one a line
//!     nodetap-fuzz seeds TARGET DIR     write TARGET's seed inputs into DIR
//!     NODETAP_FUZZ_TARGET=TARGET nodetap-fuzz     run under afl-fuzz (input on stdin)
//!
//! `cargo xtask fuzz TARGET [--seconds N]` does both.

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "list") {
        for t in nodetap::fuzzing::TARGETS {
            println!("{}", t.name);
        }
        return;
    }
    if let [_, cmd, name, dir] = args.as_slice() {
        if cmd == "seeds" {
            let target =
                nodetap::fuzzing::target(name).unwrap_or_else(|| panic!("no fuzz target {name:?}"));
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).expect("seed directory");
            let seeds = (target.seeds)(&nodetap::fuzzing::fixtures_dir());
            for (i, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i:03}")), seed).expect("write seed");
            }
            println!("{} seeds for {name}", seeds.len());
            return;
        }
    }
    let name = std::env::var("NODETAP_FUZZ_TARGET").expect("NODETAP_FUZZ_TARGET names a target");
    let target =
        nodetap::fuzzing::target(&name).unwrap_or_else(|| panic!("no fuzz target {name:?}"));
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
}
