//! What the Primary's benchmarks share: image bytes and the timed download.

use std::path::Path;
use std::time::Instant;

use primary_ecu::repo::Fetcher;
use service_runtime::digest::ThreadedDigests;
use uptane_core::hash::{Hashes, StreamVerifier};
use uptane_tests::cpu_seconds;

/// `len` bytes that do not compress, different for each `tag`.
pub(crate) fn image(len: usize, tag: u8) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(tag);
    (0..len / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

/// The two listings a download is timed with: sha256 alone (what new images list) and
/// sha256 with sha512.
pub(crate) fn listings(bytes: &[u8]) -> [(&'static str, Hashes); 2] {
    let both = uptane_core::hash::standard_hashes(bytes);
    let sha256 = Hashes::from([("sha256".to_string(), both["sha256"].clone())]);
    [("sha256", sha256), ("sha256 + sha512", both)]
}

/// Downloads, verifies (`hashes`) and persists `url` into `dir` three times, as the Primary
/// does; the median in seconds, and the CPU seconds this process used per download.
pub(crate) async fn median_download(
    fetcher: &Fetcher,
    url: &str,
    hashes: &Hashes,
    length: u64,
    dir: &Path,
) -> (f64, f64) {
    let cpu_now = || cpu_seconds(std::process::id()).unwrap();
    let (mut seconds, mut cpu) = (Vec::new(), 0.0);
    for run in 0..3 {
        let path = dir.join(format!("image-{run}"));
        let (started, cpu_before) = (Instant::now(), cpu_now());
        let file = std::fs::File::create(&path).unwrap();
        let verifier = StreamVerifier::new(Some(length), hashes).unwrap();
        let mut digests = ThreadedDigests::start(verifier).unwrap();
        fetcher
            .download_to(url, &file, &mut digests, length)
            .await
            .unwrap();
        digests.finish().await.unwrap().finish().unwrap();
        seconds.push(started.elapsed().as_secs_f64());
        cpu += cpu_now() - cpu_before;
        std::fs::remove_file(&path).unwrap();
    }
    seconds.sort_by(f64::total_cmp);
    (seconds[1], cpu / 3.0)
}
