//! Videos of the distributed store, in GridFS (bucket `videos`): written from the download as
//! it arrives, one chunk at a time, and read by range straight from the chunks collection (only
//! the chunks the range covers), so neither way holds a video in memory.

use futures::{AsyncWriteExt, StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::FindOptions;

use super::{backend, MongoStore};
use crate::store::{ByteStream, StoreError, VideoFile};

/// GridFS's default chunk size, which the bucket writes with.
const CHUNK: u64 = 255 * 1024;

impl MongoStore {
    pub(super) async fn put_video_file(
        &self,
        id: &str,
        task_id: &str,
        content_type: &str,
        mut body: ByteStream,
    ) -> Result<u64, StoreError> {
        // A second upload under an id is refused only when it closes, and GridFS's clean-up
        // then deletes the first file's chunks too: delete first.
        self.delete_video_files(&[id.to_string()]).await?;
        let mut up = self
            .videos
            .open_upload_stream(format!("{id}.mp4"))
            .id(Bson::String(id.to_string()))
            .chunk_size_bytes(CHUNK as u32)
            .metadata(doc! {"task_id": task_id, "content_type": content_type})
            .await
            .map_err(backend)?;
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = up.abort().await;
                    return Err(StoreError::Unavailable(format!("video download: {e}")));
                }
            };
            up.write_all(&chunk)
                .await
                .map_err(|e| StoreError::Unavailable(format!("GridFS write: {e}")))?;
            len += chunk.len() as u64;
        }
        up.close()
            .await
            .map_err(|e| StoreError::Unavailable(format!("GridFS close: {e}")))?;
        Ok(len)
    }

    pub(super) async fn video_file_info(&self, id: &str) -> Result<Option<VideoFile>, StoreError> {
        let file = self
            .videos
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?;
        Ok(file.map(|f| VideoFile {
            len: f.length,
            content_type: "video/mp4".into(),
        }))
    }

    pub(super) async fn read_video_range(
        &self,
        id: &str,
        start: u64,
        len: u64,
    ) -> Result<ByteStream, StoreError> {
        let chunk_size = self
            .videos
            .find_one(doc! {"_id": id})
            .await
            .map_err(backend)?
            .map_or(CHUNK, |f| u64::from(f.chunk_size_bytes));
        if len == 0 {
            return Ok(futures::stream::empty().boxed());
        }
        let end = start + len; // exclusive
        let (first, last) = (start / chunk_size, (end - 1) / chunk_size);
        let chunks = self
            .db
            .collection::<Document>("videos.chunks")
            .find(doc! {"files_id": id, "n": {"$gte": first as i64, "$lte": last as i64}})
            .with_options(FindOptions::builder().sort(doc! {"n": 1}).build())
            .await
            .map_err(backend)?;
        let stream = chunks
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(move |d| async move {
                let n = d
                    .get("n")
                    .and_then(|v| match v {
                        Bson::Int32(n) => Some(*n as u64),
                        Bson::Int64(n) => Some(*n as u64),
                        _ => None,
                    })
                    .ok_or_else(|| std::io::Error::other("a video chunk without its number"))?;
                let data = d
                    .get_binary_generic("data")
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let at = n * chunk_size;
                let from = start.saturating_sub(at).min(data.len() as u64) as usize;
                let to = (end - at).min(data.len() as u64) as usize;
                Ok(bytes::Bytes::copy_from_slice(&data[from..to.max(from)]))
            });
        Ok(stream.boxed())
    }

    pub(super) async fn delete_video_files(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            let present = self
                .videos
                .find_one(doc! {"_id": id})
                .await
                .map_err(backend)?
                .is_some();
            if present {
                self.videos
                    .delete(Bson::String(id.clone()))
                    .await
                    .map_err(backend)?;
            }
        }
        Ok(())
    }
}
