//! Making received bytes durable without stopping the receive path (issue 15): a file being
//! received (the Secondary's staging file, the Primary's download) is synced on a thread of
//! its own while the next chunks are hashed and written, so the sync at the end finds little
//! left to write; the offset a sync covers is known only once it has finished, so what the
//! Secondary reports as durable always is.

use std::sync::mpsc::{self, TryRecvError};

/// An fsync of a file being received, up to an offset, in flight on a thread of its own.
#[derive(Debug)]
pub struct BackgroundSync {
    offset: u64,
    done: mpsc::Receiver<std::io::Result<()>>,
}

impl BackgroundSync {
    /// Starts syncing `file`, which holds `offset` bytes. Dropping the result forgets the
    /// sync (a transfer abandoned or taken over): its outcome is then never recorded.
    pub fn start(file: &std::fs::File, offset: u64) -> std::io::Result<Self> {
        let file = file.try_clone()?;
        let (report, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("staging-sync".into())
            .spawn(move || {
                let _ = report.send(file.sync_all());
            })?;
        Ok(Self { offset, done })
    }

    /// The offset made durable, once the sync has finished (`None` while it runs); after an
    /// answer other than `None` the sync is over and is dropped.
    pub fn poll(&self) -> std::io::Result<Option<u64>> {
        match self.done.try_recv() {
            Ok(synced) => synced.map(|()| Some(self.offset)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(lost()),
        }
    }

    /// Waits for the sync; the offset it made durable.
    pub fn wait(self) -> std::io::Result<u64> {
        self.done.recv().map_err(|_| lost())?.map(|()| self.offset)
    }
}

fn lost() -> std::io::Error {
    std::io::Error::other("the staging file's sync thread stopped before reporting")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_sync_reports_the_offset_it_covers_once_finished() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = std::fs::File::create(dir.path().join("staging")).unwrap();
        file.write_all(&[7; 4096]).unwrap();
        let sync = BackgroundSync::start(&file, 4096).unwrap();
        // Bytes written after the sync started are not claimed by it.
        file.write_all(&[8; 4096]).unwrap();
        assert_eq!(sync.wait().unwrap(), 4096);
        let sync = BackgroundSync::start(&file, 8192).unwrap();
        // Polled until it has finished (bounded; a sync of 8 KiB takes milliseconds).
        let polled = (0..1_000_000).find_map(|_| {
            std::thread::yield_now();
            sync.poll().unwrap()
        });
        assert_eq!(polled, Some(8192));
    }
}
