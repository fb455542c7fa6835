//! Keeping generated images: downloaded at once (provider URLs expire) or taken as the provider
//! sent them, sniffed, measured and stored. Ark's calls and Jimeng's tasks both end here.

use super::Worker;
use crate::domain::{ModelSpec, StoredImage, Task};
use crate::provider::{GenerateRequest, ProviderError};
use crate::store::ImageBlob;

fn image_type(bytes: &[u8]) -> &'static str {
    match imagesize::image_type(bytes) {
        Ok(imagesize::ImageType::Png) => "image/png",
        Ok(imagesize::ImageType::Jpeg) => "image/jpeg",
        Ok(imagesize::ImageType::Webp) => "image/webp",
        Ok(imagesize::ImageType::Gif) => "image/gif",
        _ => "application/octet-stream",
    }
}

/// What an image of `width` × `height` is expected to weigh before its download says: Ark's
/// JPEGs and the emulator's PNGs are 0.2 – 0.3 bytes a pixel (a 4K JPEG a few MB).
fn estimated_bytes((width, height): (u32, u32)) -> u64 {
    (u64::from(width) * u64::from(height) * 3 / 10).max(64 * 1024)
}

/// The provider call an image task asks for.
pub(super) fn generate_request(task: &Task, spec: &ModelSpec) -> GenerateRequest {
    GenerateRequest {
        task_id: task.id.clone(),
        model: task.model.clone(),
        prompt: task.prompt.clone(),
        size: task.params.size.clone(),
        seed: task.params.seed,
        guidance_scale: task.params.guidance_scale,
        watermark: task.params.watermark,
        images: task.params.images.clone(),
        max_images: task.params.n.min(spec.max_output_images),
    }
}

impl Worker {
    /// Downloads one image at once (provider URLs expire after 24 h) and stores it.
    pub(super) async fn keep_image(
        &self,
        task: &Task,
        spec: &ModelSpec,
        url: &str,
        size: Option<String>,
    ) -> Result<StoredImage, ProviderError> {
        // Held through the store write too: the bytes stay in memory until then.
        let _place = self
            .downloads
            .acquire()
            .await
            .map_err(|_| ProviderError::ours("ShuttingDown", "the worker is stopping", true))?;
        let asked = spec.output_dims(size.as_deref().unwrap_or(&task.params.size));
        let fetched = self
            .provider
            .fetch(url, &self.download_budget, estimated_bytes(asked))
            .await?;
        // The bytes stay in memory until the store has them.
        let _held = fetched.held;
        self.store_image(task, asked, fetched.bytes, fetched.content_type, Some(url))
            .await
    }

    /// Stores an image's bytes (downloaded, or sent inline by the provider); `asked` are the
    /// dimensions it was asked for, used when the bytes do not say.
    pub(super) async fn store_image(
        &self,
        task: &Task,
        asked: (u32, u32),
        data: bytes::Bytes,
        sent_type: Option<String>,
        url: Option<&str>,
    ) -> Result<StoredImage, ProviderError> {
        let (width, height) = match imagesize::blob_size(&data) {
            Ok(d) => (d.width as u32, d.height as u32),
            Err(_) => asked,
        };
        let sniffed = image_type(&data);
        let content_type = if sniffed == "application/octet-stream" {
            sent_type.unwrap_or_else(|| sniffed.to_string())
        } else {
            sniffed.to_string()
        };
        let blob = ImageBlob {
            // Random (v4), not time-ordered: image URLs must not be guessable.
            id: uuid::Uuid::new_v4().to_string(),
            task_id: task.id.clone(),
            content_type: content_type.clone(),
            data,
        };
        let bytes = blob.data.len() as u64;
        self.backends
            .store
            .put_image(&blob)
            .await
            .map_err(|e| ProviderError::ours("StorageError", e.to_string(), true))?;
        Ok(StoredImage {
            id: blob.id,
            provider_url: url.map(str::to_string),
            width,
            height,
            bytes,
            content_type,
        })
    }

    pub(super) async fn forget(&self, images: &[StoredImage]) {
        if images.is_empty() {
            return;
        }
        let ids: Vec<String> = images.iter().map(|i| i.id.clone()).collect();
        if let Err(e) = self.backends.store.delete_images(&ids).await {
            tracing::warn!(error = %e, "could not delete images of a dropped attempt");
        }
    }
}
