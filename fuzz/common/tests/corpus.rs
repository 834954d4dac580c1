//! Every committed corpus file and every regression input, through its target's body, on
//! the stable toolchain without libFuzzer: a crash the fuzzer once found stays fixed, and
//! the seeds still reach what they were written to reach (the seeds' own checks).

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_and_regression_input_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut ran = 0;
    for (target, run) in fuzz_common::TARGETS {
        let files: Vec<PathBuf> = ["corpus", "regressions"]
            .iter()
            .flat_map(|kind| inputs(&root.join(kind).join(target)))
            .collect();
        assert!(!files.is_empty(), "{target} has no committed corpus");
        for file in files {
            let bytes = std::fs::read(&file).expect("corpus file reads");
            eprintln!("{target}: {}", file.display());
            run(&bytes);
            ran += 1;
        }
    }
    eprintln!("{ran} inputs ran");
}

#[test]
fn committed_seeds_are_the_ones_the_fixtures_make() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (target, _) in fuzz_common::TARGETS {
        for (name, bytes) in fuzz_common::seeds::seeds(target) {
            let committed = std::fs::read(root.join(target).join(&name)).unwrap_or_else(|_| {
                panic!("{target}/{name} is not committed: run the seeds binary")
            });
            assert!(
                committed == bytes,
                "{target}/{name} differs from what the fixtures make: run the seeds binary"
            );
        }
    }
}
