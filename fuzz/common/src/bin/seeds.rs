//! Writes the seed corpora: `cargo run --manifest-path fuzz/Cargo.toml -p fuzz-common --bin
//! seeds` (run from the repository root) replaces every `fuzz/corpus/<target>/seed-*` file.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    for (target, _) in fuzz_common::TARGETS {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(entry.path())?;
            }
        }
        let seeds = fuzz_common::seeds::seeds(target);
        for (name, bytes) in &seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}
