//! Client of Ark's content generation tasks API (volcengine-api.md B): create, list by
//! `filter.task_ids` (one request for many tasks), DELETE, and the streamed download of the MP4.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ark::{is_retryable, retry_after, transport_error};
use super::{ByteStream, ProviderError, RemoteSubmit, RemoteTask, VideoProvider, VideoState};

pub struct ArkVideoClient {
    http: reqwest::Client,
    tasks_url: String,
    api_key: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct ListAnswer {
    #[serde(default)]
    items: Vec<WireTask>,
}

#[derive(Deserialize)]
struct WireTask {
    id: String,
    status: String,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    content: Option<WireContent>,
}

#[derive(Deserialize)]
struct WireContent {
    video_url: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct WireError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct WireErrorEnvelope {
    error: WireError,
}

impl WireTask {
    fn state(self) -> VideoState {
        match self.status.as_str() {
            "succeeded" => match self.content.and_then(|c| c.video_url) {
                Some(url) if !url.is_empty() => VideoState::Succeeded { video_url: url },
                _ => VideoState::Failed {
                    code: "NoVideo".into(),
                    message: "the provider reported success without a video URL".into(),
                },
            },
            "failed" => {
                let e = self.error.unwrap_or(WireError {
                    code: "VideoFailed".into(),
                    message: "the provider reported the task failed".into(),
                });
                VideoState::Failed {
                    code: e.code,
                    message: e.message,
                }
            }
            "cancelled" | "expired" => VideoState::Cancelled,
            _ => VideoState::Working,
        }
    }
}

async fn error_of(resp: reqwest::Response) -> ProviderError {
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let after = retry_after(resp.headers());
    let bytes = resp.bytes().await.unwrap_or_default();
    let (code, message) = match serde_json::from_slice::<WireErrorEnvelope>(&bytes) {
        Ok(w) if !w.error.code.is_empty() => (w.error.code, w.error.message),
        _ => (
            format!("HTTP{status}"),
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
        ),
    };
    ProviderError {
        retryable: is_retryable(status, &code),
        code,
        message,
        status: Some(status),
        retry_after: after,
        request_id,
    }
}

fn bad_response(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::ours(
        "BadResponse",
        format!("unreadable provider response: {e}"),
        true,
    )
}

impl ArkVideoClient {
    /// `endpoint` as for the image client (`/api/v3` tolerated).
    pub fn new(
        endpoint: &str,
        api_key: &str,
        timeout: Duration,
    ) -> Result<ArkVideoClient, ProviderError> {
        let root = endpoint.trim_end_matches('/');
        let root = root.strip_suffix("/api/v3").unwrap_or(root);
        // No total timeout: a video download takes as long as its size needs; a stalled one
        // is caught by the read timeout.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .read_timeout(timeout)
            .build()
            .map_err(|e| ProviderError::ours("ClientSetup", e.to_string(), false))?;
        Ok(ArkVideoClient {
            http,
            tasks_url: format!("{root}/api/v3/contents/generations/tasks"),
            api_key: api_key.to_string(),
        })
    }
}

#[async_trait]
impl VideoProvider for ArkVideoClient {
    #[tracing::instrument(skip_all, fields(model = %req.model()))]
    async fn submit(&self, req: &RemoteSubmit) -> Result<String, ProviderError> {
        let RemoteSubmit::Video(req) = req else {
            return Err(ProviderError::ours(
                "UnsupportedTask",
                "Ark's content generation tasks make videos only",
                false,
            ));
        };
        let mut content = vec![json!({"type": "text", "text": req.prompt})];
        let roles: &[&str] = match req.frames.len() {
            2 => &["first_frame", "last_frame"],
            _ => &["first_frame"],
        };
        for (url, role) in req.frames.iter().zip(roles) {
            content.push(json!({"type": "image_url", "image_url": {"url": url}, "role": role}));
        }
        // Body-level parameters (strictly validated by Ark), not the lenient inline flags.
        let mut body = json!({
            "model": req.model,
            "content": content,
            "duration": req.duration,
            "ratio": req.ratio,
            "resolution": req.resolution,
            "camera_fixed": req.camera_fixed,
            "watermark": req.watermark,
        });
        if let Some(seed) = req.seed {
            body["seed"] = json!(seed);
        }
        if let Some(url) = &req.callback_url {
            body["callback_url"] = json!(url);
        }
        let resp = self
            .http
            .post(&self.tasks_url)
            .bearer_auth(&self.api_key)
            .header("X-Client-Request-Id", &req.task_id)
            .timeout(Duration::from_secs(60))
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let c: Created = resp.json().await.map_err(bad_response)?;
        Ok(c.id)
    }

    async fn states(
        &self,
        tasks: &[RemoteTask],
    ) -> Result<HashMap<String, VideoState>, ProviderError> {
        let ids: Vec<&String> = tasks.iter().map(|t| &t.id).collect();
        let mut query: Vec<(&str, String)> = vec![
            ("page_num", "1".into()),
            ("page_size", ids.len().clamp(1, 500).to_string()),
        ];
        query.extend(ids.iter().map(|id| ("filter.task_ids", id.to_string())));
        let resp = self
            .http
            .get(&self.tasks_url)
            .bearer_auth(&self.api_key)
            .query(&query)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let list: ListAnswer = resp.json().await.map_err(bad_response)?;
        Ok(list
            .items
            .into_iter()
            .map(|t| (t.id.clone(), t.state()))
            .collect())
    }

    async fn state(&self, task: &RemoteTask) -> Result<VideoState, ProviderError> {
        let resp = self
            .http
            .get(format!("{}/{}", self.tasks_url, task.id))
            .bearer_auth(&self.api_key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        if !resp.status().is_success() {
            return Err(error_of(resp).await);
        }
        let task: WireTask = resp.json().await.map_err(bad_response)?;
        Ok(task.state())
    }

    async fn cancel(&self, task: &RemoteTask) -> Result<(), ProviderError> {
        let resp = self
            .http
            .delete(format!("{}/{}", self.tasks_url, task.id))
            .bearer_auth(&self.api_key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(error_of(resp).await)
        }
    }

    async fn download(&self, url: &str) -> Result<(ByteStream, Option<u64>), ProviderError> {
        super::download_stream(&self.http, url).await
    }
}
