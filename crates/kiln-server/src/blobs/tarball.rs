//! A set of blobs as one `.tar.gz`, streamed: tar and gzip run on a blocking thread that
//! reads each blob as it goes, so memory stays flat whatever the build holds.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::{BlobStore, BlobStream};

/// Bytes handed to the response at a time.
const CHUNK: usize = 256 * 1024;

/// One file of the archive.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the epoch.
    pub mtime: u64,
}

struct ChannelWriter {
    sender: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// The archive of `entries` (in order) from `blobs`. A blob that cannot be read ends the
/// stream with an error, so the client sees a broken download, never a short archive
/// that looks whole.
pub fn tar_gz(blobs: Arc<dyn BlobStore>, entries: Vec<TarEntry>) -> BlobStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    let runtime = tokio::runtime::Handle::current();
    let errors = sender.clone();
    tokio::task::spawn_blocking(move || {
        let result = (|| -> std::io::Result<()> {
            let writer = ChannelWriter {
                sender,
                buffer: Vec::with_capacity(CHUNK),
            };
            let mut archive = tar::Builder::new(GzEncoder::new(writer, Compression::fast()));
            for entry in entries {
                let stream = runtime
                    .block_on(blobs.read(&entry.sha256, 0, None))
                    .map_err(std::io::Error::other)?;
                let reader =
                    SyncIoBridge::new_with_handle(StreamReader::new(stream), runtime.clone());
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size);
                header.set_mode(entry.mode);
                header.set_mtime(entry.mtime);
                archive.append_data(&mut header, &entry.path, reader)?;
            }
            let mut writer = archive.into_inner()?.finish()?;
            writer.flush()
        })();
        if let Err(error) = result {
            let _ = errors.blocking_send(Err(error));
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
