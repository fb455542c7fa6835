//! Videos of the embedded store: one file each under `<data folder>/videos/`, written from the
//! download as it arrives (to `<id>.part`, synced, then renamed, so a crash never leaves a
//! partial video under its real name) and read by range.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::store::{ByteStream, StoreError, VideoFile};

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

/// The file of a video id; ids are ours (UUIDs), anything else names no file.
fn file(dir: &Path, id: &str) -> Option<PathBuf> {
    let ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then(|| dir.join(format!("{id}.mp4")))
}

fn bad_id() -> StoreError {
    StoreError::Backend("not a video id".into())
}

pub(super) async fn put(dir: &Path, id: &str, mut body: ByteStream) -> Result<u64, StoreError> {
    let path = file(dir, id).ok_or_else(bad_id)?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io("creating the videos folder", e))?;
    let part = path.with_extension("part");
    let mut f = tokio::fs::File::create(&part)
        .await
        .map_err(|e| io("creating a video file", e))?;
    let mut len = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                drop(f);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(StoreError::Unavailable(format!("video download: {e}")));
            }
        };
        f.write_all(&chunk)
            .await
            .map_err(|e| io("writing a video file", e))?;
        len += chunk.len() as u64;
    }
    f.sync_all()
        .await
        .map_err(|e| io("syncing a video file", e))?;
    drop(f);
    tokio::fs::rename(&part, &path)
        .await
        .map_err(|e| io("naming a video file", e))?;
    Ok(len)
}

pub(super) async fn stat(dir: &Path, id: &str) -> Result<Option<VideoFile>, StoreError> {
    let Some(path) = file(dir, id) else {
        return Ok(None);
    };
    match tokio::fs::metadata(&path).await {
        Ok(m) => Ok(Some(VideoFile {
            len: m.len(),
            content_type: "video/mp4".into(),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading a video file", e)),
    }
}

pub(super) async fn read(
    dir: &Path,
    id: &str,
    start: u64,
    len: u64,
) -> Result<ByteStream, StoreError> {
    let path = file(dir, id).ok_or_else(bad_id)?;
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| io("opening a video file", e))?;
    f.seek(SeekFrom::Start(start))
        .await
        .map_err(|e| io("seeking in a video file", e))?;
    let reader = f.take(len);
    // 64 KiB at a time: a range of a large video is never read whole into memory.
    let stream = futures::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let mut buf = vec![0u8; 64 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(stream.boxed())
}

pub(super) async fn delete(dir: &Path, ids: &[String]) -> Result<(), StoreError> {
    for id in ids {
        if let Some(path) = file(dir, id) {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("deleting a video file", e)),
            }
        }
    }
    Ok(())
}
