//! Appending a large download to a file with `O_DIRECT`: the bytes go from one aligned buffer
//! to the device instead of being copied into fresh page-cache pages and written back later.
//! On our machines that copy was a fifth of the Primary's CPU while it downloaded an image
//! (`copy_folio_from_iter_atomic`, docs/BENCHMARKS.md), and `dd` writing 2 GiB spent 0.93 s
//! of system time buffered against 0.28 s direct.
//!
//! `O_DIRECT` wants the memory, the file offset and the length aligned to the device's block
//! size, so only whole aligned blocks are written directly. Bytes before the first aligned
//! offset (a resumed download) and the last partial block go through the caller's ordinary
//! descriptor. Where direct writes are not possible (a filesystem that refuses them, such as
//! tmpfs before Linux 6.6, no `/proc`, a device with larger blocks, not Linux) every byte
//! goes through the ordinary descriptor, as before. Durability is unchanged: neither kind of
//! write is durable until the caller's final `sync_all`, which also flushes the device's
//! cache; and the file stays a prefix of what was appended across a power cut (see
//! [`DirectAppender::append`]).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The alignment asked of offsets, lengths and memory: a page, the largest logical block size
/// of ordinary disks.
const ALIGN: usize = 4096;

/// Bytes gathered before one direct write.
const BLOCK: usize = 1 << 20;

/// Appends to a file, whole aligned blocks through a second descriptor opened with
/// `O_DIRECT`, the rest through the file's own descriptor.
pub struct DirectAppender {
    /// The caller's descriptor: appends what cannot be written directly.
    plain: File,
    /// The same file opened again with `O_DIRECT`, while direct writes work.
    direct: Option<File>,
    /// The file's length: where the next byte goes.
    end: u64,
    /// Aligned room for [`BLOCK`] bytes inside an ordinary allocation (no `unsafe`).
    buffer: Vec<u8>,
    /// Where the aligned room starts in `buffer`.
    start: usize,
    /// Bytes gathered in the room, not yet written.
    pending: usize,
}

impl std::fmt::Debug for DirectAppender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectAppender")
            .field("direct", &self.direct.is_some())
            .field("end", &self.end)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl DirectAppender {
    /// Appends to `file` (at its end, as its length is now), which nobody else may write
    /// meanwhile. Direct writes are used when the file can be opened again with `O_DIRECT`.
    pub fn new(file: File) -> std::io::Result<Self> {
        let direct = open_direct(&file);
        Self::with(file, direct)
    }

    /// Appends to `file` through its own descriptor only (the page cache, as a filesystem
    /// that refuses direct writes gets).
    pub fn buffered(file: File) -> std::io::Result<Self> {
        Self::with(file, None)
    }

    fn with(file: File, direct: Option<File>) -> std::io::Result<Self> {
        let end = file.metadata()?.len();
        let buffer = if direct.is_some() {
            vec![0u8; BLOCK + ALIGN]
        } else {
            Vec::new()
        };
        // `align_offset` may decline to say (`usize::MAX`); then no direct writes. Without
        // them the room is empty and starts at 0.
        let start = buffer.as_ptr().align_offset(ALIGN);
        let (direct, start) = match direct {
            Some(direct) if start < ALIGN => (Some(direct), start),
            _ => (None, 0),
        };
        Ok(Self {
            plain: file,
            direct,
            end,
            buffer,
            start,
            pending: 0,
        })
    }

    /// The file's ordinary descriptor (to sync it).
    pub fn file(&self) -> &File {
        &self.plain
    }

    /// Whether whole blocks are still written directly.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The file's length once everything appended so far is written.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.end + self.pending as u64
    }

    /// Appends `bytes`: gathered, and written a megabyte at a time as the room fills. Up to a
    /// megabyte may stay gathered until [`Self::write_gathered`] or [`Self::finish`]: a
    /// direct write waits for the device, so many small ones (a TLS record each) would be
    /// slower than the copy they save.
    pub fn append(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        // A file that does not end on a block boundary (a resumed download) is brought to one
        // through the ordinary descriptor, and those bytes are made durable before any direct
        // write: a direct write past them moves the file's size on disk within seconds (the
        // filesystem's journal), and a power cut before their page was written back would
        // leave zeros inside the kept file, which the next resume would hash as the image's
        // (only to fail its digest check at the end and download it all again).
        if self.direct.is_some() && self.pending == 0 && !self.end.is_multiple_of(ALIGN as u64) {
            let head = (ALIGN as u64 - self.end % ALIGN as u64) as usize;
            let head = head.min(bytes.len());
            write_plain(&self.plain, &mut self.end, &bytes[..head])?;
            self.plain.sync_data()?;
            bytes = &bytes[head..];
        }
        while !bytes.is_empty() {
            if self.direct.is_none() {
                return write_plain(&self.plain, &mut self.end, bytes);
            }
            let take = (BLOCK - self.pending).min(bytes.len());
            let at = self.start + self.pending;
            self.buffer[at..at + take].copy_from_slice(&bytes[..take]);
            self.pending += take;
            bytes = &bytes[take..];
            if self.pending == BLOCK {
                self.write_gathered()?;
            }
        }
        Ok(())
    }

    /// Writes every whole aligned block gathered, directly; less than one block stays
    /// gathered, at the front of the room, until the next call or [`Self::finish`]. Once
    /// direct writes have stopped, writes everything gathered through the ordinary
    /// descriptor. A caller appending what arrived in batches calls this after each, so that
    /// what arrived is on the file even if nothing more comes.
    pub fn write_gathered(&mut self) -> std::io::Result<()> {
        let whole = self.pending - self.pending % ALIGN;
        let room = &self.buffer[self.start..self.start + self.pending];
        let written = match &self.direct {
            Some(direct) if whole > 0 => {
                let written = write_direct(direct, &room[..whole], self.end);
                if written < whole {
                    // The device refused (or wrote part): from here on everything goes
                    // through the ordinary descriptor, which continues where the direct
                    // writes stopped.
                    tracing::warn!(
                        offset = self.end + written as u64,
                        "direct writes stopped: appending buffered"
                    );
                    self.direct = None;
                }
                written
            }
            _ => 0,
        };
        self.end += written as u64;
        if self.direct.is_none() {
            let rest = self.start + written..self.start + self.pending;
            self.pending = 0;
            return write_plain(&self.plain, &mut self.end, &self.buffer[rest]);
        }
        self.buffer
            .copy_within(self.start + whole..self.start + self.pending, self.start);
        self.pending -= whole;
        Ok(())
    }

    /// Writes what is still gathered (less than a block) through the ordinary descriptor and
    /// hands that descriptor back; the file then holds every byte appended. The caller syncs.
    pub fn finish(mut self) -> std::io::Result<File> {
        let room = self.start..self.start + self.pending;
        self.pending = 0;
        write_plain(&self.plain, &mut self.end, &self.buffer[room])?;
        Ok(self.plain)
    }
}

/// Writes `bytes` at `end` through the ordinary descriptor and moves `end` past them.
fn write_plain(plain: &File, end: &mut u64, bytes: &[u8]) -> std::io::Result<()> {
    plain.write_all_at(bytes, *end)?;
    *end += bytes.len() as u64;
    Ok(())
}

/// `file` opened again for direct writes, if the system and the filesystem allow it.
#[cfg(target_os = "linux")]
fn open_direct(file: &File) -> Option<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .inspect_err(|e| tracing::debug!(error = %e, "no direct writes: appending buffered"))
        .ok()
}

/// Direct writes are used on Linux only.
#[cfg(not(target_os = "linux"))]
fn open_direct(_file: &File) -> Option<File> {
    None
}

/// Writes `blocks` at `offset` through the direct descriptor; how many bytes went (fewer
/// than asked when the device refused or wrote part).
fn write_direct(direct: &File, blocks: &[u8], offset: u64) -> usize {
    let mut written = 0;
    while written < blocks.len() {
        match direct.write_at(&blocks[written..], offset + written as u64) {
            Ok(0) => break,
            // A part that is not whole blocks cannot be continued directly.
            Ok(n) if n % ALIGN != 0 => return written + n,
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "a direct write was refused");
                break;
            }
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The file opened as the Primary opens a partial download: for appending and reading.
    fn appending(path: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .unwrap()
    }

    /// An appender that writes directly, failing the test where the test directory's
    /// filesystem refuses `O_DIRECT` (ext4, xfs and, since Linux 6.6, tmpfs take it): a test
    /// of the direct path must not pass without taking it.
    fn direct(path: &std::path::Path) -> DirectAppender {
        let appender = DirectAppender::new(appending(path)).unwrap();
        assert!(
            appender.is_direct(),
            "{} refuses O_DIRECT; run the tests on a filesystem that takes it",
            path.display()
        );
        appender
    }

    /// Pieces of every awkward size, from an empty file and from files that do and do not
    /// end on a block boundary, gathered and written in every order, give exactly the bytes
    /// appended, and the length says so at every step: with direct writes and with the
    /// ordinary descriptor alone (where a filesystem refuses them).
    #[test]
    fn the_file_holds_exactly_the_bytes_appended_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [
            0,
            1,
            4095,
            4096,
            4097,
            100_000,
            BLOCK - 1,
            BLOCK,
            BLOCK + 5,
            3 * BLOCK + 17,
        ];
        for directly in [true, false] {
            for kept in [0usize, 1000, 8192] {
                let path = dir.path().join(format!("image-{kept}-{directly}"));
                let mut expected = pattern(kept, 1);
                std::fs::write(&path, &expected).unwrap();
                let mut appender = if directly {
                    direct(&path)
                } else {
                    DirectAppender::buffered(appending(&path)).unwrap()
                };
                assert_eq!(appender.len(), kept as u64);
                for (i, size) in sizes.iter().enumerate() {
                    let piece = pattern(*size, i as u8);
                    appender.append(&piece).unwrap();
                    if i % 2 == 0 {
                        appender.write_gathered().unwrap();
                    }
                    expected.extend_from_slice(&piece);
                    assert_eq!(appender.len(), expected.len() as u64);
                }
                assert_eq!(appender.is_direct(), directly);
                let file = appender.finish().unwrap();
                file.sync_all().unwrap();
                drop(file);
                assert!(
                    std::fs::read(&path).unwrap() == expected,
                    "{}",
                    path.display()
                );
            }
        }
    }

    /// A device that refuses a direct write midway (here: a descriptor that cannot write,
    /// put in place of the direct one) costs nothing but speed: the bytes go through the
    /// ordinary descriptor from where the direct writes stopped, and the file holds them all.
    #[test]
    fn a_refused_direct_write_falls_back_without_losing_a_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, pattern(1000, 3)).unwrap();
        let mut appender = direct(&path);
        let mut expected = pattern(1000, 3);
        let first = pattern(BLOCK + 100, 4);
        appender.append(&first).unwrap();
        appender.write_gathered().unwrap();
        expected.extend_from_slice(&first);
        appender.direct = Some(std::fs::File::open(&path).unwrap());
        let second = pattern(2 * BLOCK + 7, 5);
        appender.append(&second).unwrap();
        expected.extend_from_slice(&second);
        assert!(!appender.is_direct(), "the refusal is noticed");
        assert_eq!(appender.len(), expected.len() as u64);
        let third = pattern(5000, 6);
        appender.append(&third).unwrap();
        expected.extend_from_slice(&third);
        drop(appender.finish().unwrap());
        assert!(std::fs::read(&path).unwrap() == expected);
    }

    /// Whole blocks are written directly, and an interrupted append leaves a prefix of the
    /// bytes: what was written before the interruption, whole blocks only, nothing else.
    #[test]
    fn whole_blocks_go_directly_and_a_dropped_appender_leaves_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let mut appender = direct(&path);
        let bytes = pattern(2 * BLOCK + 300, 9);
        appender.append(&bytes[..5000]).unwrap();
        // Gathered, not yet written.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        appender.append(&bytes[5000..]).unwrap();
        appender.write_gathered().unwrap();
        assert!(appender.is_direct());
        // The last 300 bytes are gathered, not written; the rest is on the file.
        drop(appender);
        let kept = std::fs::read(&path).unwrap();
        assert_eq!(kept.len(), 2 * BLOCK);
        assert!(kept[..] == bytes[..2 * BLOCK]);
    }
}
