//! Client of Jimeng on Volcengine's visual API (volcengine-api.md C): `CVSync2AsyncSubmitTask`
//! and `CVSync2AsyncGetResult` (`Version=2022-08-31`), each request signed with the access key
//! pair (`volc_sign`, V4 HMAC-SHA256, region `cn-north-1`, service `cv`). Every Jimeng model,
//! image or video, is a provider-side task: submitted once, then its state read with GetResult,
//! one request per task (the API has no batch read), a few at a time.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};

use super::ark::{retry_after, transport_error};
use super::volc_sign::{self, Credentials};
use super::{
    ByteStream, GenerateRequest, ProviderError, RemoteImage, RemoteSubmit, RemoteTask,
    VideoProvider, VideoState, VideoSubmit,
};
use crate::domain::jimeng::frames_of;

pub const VERSION: &str = "2022-08-31";
pub const SUBMIT: &str = "CVSync2AsyncSubmitTask";
pub const GET_RESULT: &str = "CVSync2AsyncGetResult";
/// GetResult requests in flight at once for one poll.
const READS_AT_ONCE: usize = 8;
/// The business code of success.
const SUCCESS: i64 = 10000;

pub struct JimengClient {
    http: reqwest::Client,
    endpoint: String,
    creds: Credentials,
}

/// A refusal as the visual API words it, with the hint a reader needs for the usual ones.
fn gateway_error(status: u16, meta: &Value, after: Option<Duration>) -> ProviderError {
    let err = &meta["Error"];
    let code = err["Code"].as_str().unwrap_or("GatewayError").to_string();
    let said = err["Message"].as_str().unwrap_or_default();
    let message = match code.as_str() {
        "SignatureDoesNotMatch" => format!(
            "the visual API refused the request's signature: check VOLCENGINE_SECRET_KEY ({said})"
        ),
        "InvalidAccessKey" => {
            format!(
                "the visual API does not know the access key: check VOLCENGINE_ACCESS_KEY ({said})"
            )
        }
        _ => said.to_string(),
    };
    let retryable = status == 429 || status >= 500;
    ProviderError {
        code,
        message,
        status: Some(status),
        retryable,
        retry_after: after,
        request_id: meta["RequestId"].as_str().map(str::to_string),
    }
}

/// A business error (`code` other than 10000) of the C.6 table.
fn business_error(status: u16, body: &Value, after: Option<Duration>) -> ProviderError {
    let code = body["code"].as_i64().unwrap_or_default();
    let retryable = status == 429 || status >= 500;
    // Only what the API said: how long a 429 waits is the worker's rule (`worker::submit`), the
    // same for both families.
    ProviderError {
        code: code.to_string(),
        message: body["message"]
            .as_str()
            .unwrap_or("the visual API refused the request")
            .to_string(),
        status: Some(status),
        retryable,
        retry_after: after,
        request_id: body["request_id"].as_str().map(str::to_string),
    }
}

/// Reference images as the visual API takes them: all URLs (`image_urls`), or all inline
/// (`binary_data_base64`, from data URLs); it refuses both in one request.
fn put_images(body: &mut Value, images: &[String]) -> Result<(), ProviderError> {
    if images.is_empty() {
        return Ok(());
    }
    let inline: Vec<&str> = images
        .iter()
        .filter_map(|i| i.strip_prefix("data:"))
        .filter_map(|i| i.split_once("base64,").map(|(_, b64)| b64))
        .collect();
    if inline.is_empty() {
        body["image_urls"] = json!(images);
    } else if inline.len() == images.len() {
        body["binary_data_base64"] = json!(inline);
    } else {
        return Err(ProviderError::ours(
            "MixedImages",
            "Jimeng takes reference images either all as URLs or all as data URLs",
            false,
        ));
    }
    Ok(())
}

fn image_body(req: &GenerateRequest) -> Result<Value, ProviderError> {
    let mut body = json!({"req_key": req.model, "prompt": req.prompt});
    if let Some(seed) = req.seed {
        body["seed"] = json!(seed);
    }
    let side = |t: &str| match t.to_ascii_uppercase().as_str() {
        "1K" => Some(1024),
        "2K" => Some(2048),
        "4K" => Some(4096),
        _ => None,
    };
    if let Some((w, h)) = crate::domain::models::parse_wxh(&req.size) {
        body["width"] = json!(w);
        body["height"] = json!(h);
    } else if let Some(s) = side(&req.size) {
        body["width"] = json!(s);
        body["height"] = json!(s);
    }
    // 4.0 and 4.6 may make several images from one prompt; a task asks for one.
    if matches!(
        req.model.as_str(),
        "jimeng_t2i_v40" | "jimeng_seedream46_cvtob"
    ) {
        body["force_single"] = json!(req.max_images <= 1);
    }
    put_images(&mut body, &req.images)?;
    Ok(body)
}

fn video_body(req: &VideoSubmit) -> Result<Value, ProviderError> {
    let mut body = json!({"req_key": req.model, "frames": frames_of(req.duration)});
    if !req.prompt.trim().is_empty() {
        body["prompt"] = json!(req.prompt);
    }
    if let Some(seed) = req.seed {
        body["seed"] = json!(seed);
    }
    // The aspect is the first frame's when there is one.
    if req.frames.is_empty() && req.ratio != "adaptive" {
        body["aspect_ratio"] = json!(req.ratio);
    }
    put_images(&mut body, &req.frames)?;
    Ok(body)
}

/// A done task's result: a video URL, image URLs, or inline images.
fn finished(data: &Value) -> VideoState {
    if let Some(url) = data["video_url"].as_str().filter(|u| !u.is_empty()) {
        return VideoState::Succeeded {
            video_url: url.to_string(),
        };
    }
    let strings = |f: &str| -> Vec<String> {
        data[f]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut images: Vec<RemoteImage> = strings("image_urls")
        .into_iter()
        .map(RemoteImage::Url)
        .collect();
    for b64 in strings("binary_data_base64") {
        match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
            Ok(bytes) => images.push(RemoteImage::Inline(bytes.into())),
            Err(_) => {
                return VideoState::Failed {
                    code: "BadResponse".into(),
                    message: "the visual API sent an image that is not base64".into(),
                }
            }
        }
    }
    if images.is_empty() {
        VideoState::Failed {
            code: "NoResult".into(),
            message: "the visual API reported the task done without a result".into(),
        }
    } else {
        VideoState::ImagesReady { images }
    }
}

impl JimengClient {
    /// `endpoint` is the visual API's root (`https://visual.volcengineapi.com`, or the
    /// emulator's).
    pub fn new(
        endpoint: &str,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<JimengClient, ProviderError> {
        // No total timeout: a video download takes as long as its size needs.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .read_timeout(timeout)
            .build()
            .map_err(|e| ProviderError::ours("ClientSetup", e.to_string(), false))?;
        Ok(JimengClient {
            http,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            creds,
        })
    }

    /// One signed call; the `data` of a success.
    async fn call(&self, action: &str, body: &Value) -> Result<Value, ProviderError> {
        let url = reqwest::Url::parse(&format!(
            "{}/?Action={action}&Version={VERSION}",
            self.endpoint
        ))
        .map_err(|e| ProviderError::ours("ClientSetup", e.to_string(), false))?;
        let bytes = serde_json::to_vec(body)
            .map_err(|e| ProviderError::ours("ClientSetup", e.to_string(), false))?;
        let content_type = "application/json";
        let signed = volc_sign::sign_request(
            &self.creds,
            "POST",
            &url,
            Some(content_type),
            &bytes,
            Utc::now(),
        );
        let resp = self
            .http
            .post(url)
            .header("Content-Type", content_type)
            .header("X-Date", &signed.x_date)
            .header("X-Content-Sha256", &signed.x_content_sha256)
            .header("Authorization", &signed.authorization)
            .timeout(Duration::from_secs(60))
            .body(bytes)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let raw = resp.bytes().await.map_err(|e| transport_error(&e))?;
        let answer: Value = match serde_json::from_slice(&raw) {
            Ok(v) => v,
            Err(_) => {
                return Err(ProviderError {
                    code: format!("HTTP{status}"),
                    message: String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned(),
                    status: Some(status),
                    retryable: status == 429 || status >= 500,
                    retry_after: after,
                    request_id: None,
                })
            }
        };
        if answer["ResponseMetadata"]["Error"].is_object() {
            return Err(gateway_error(status, &answer["ResponseMetadata"], after));
        }
        if answer["code"].as_i64() != Some(SUCCESS) {
            return Err(business_error(status, &answer, after));
        }
        Ok(answer["data"].clone())
    }

    /// One task's id with its state (owned, so that many can be read at once).
    async fn read(&self, task: RemoteTask) -> (String, Result<VideoState, ProviderError>) {
        let state = self.state(&task).await;
        (task.id, state)
    }

    /// The state of one task, or the error that kept it from being read.
    async fn state(&self, task: &RemoteTask) -> Result<VideoState, ProviderError> {
        // URLs rather than base64: smaller answers, and the images are then downloaded within
        // the worker's download budget like Ark's.
        let options = json!({"return_url": true, "logo_info": {"add_logo": task.watermark}});
        let body = json!({"req_key": task.model, "task_id": task.id,
                          "req_json": options.to_string()});
        let data = match self.call(GET_RESULT, &body).await {
            Ok(d) => d,
            // The task ran and the provider refused its result (moderation, C.6): it ended.
            Err(e) if !e.retryable && e.status.is_some_and(|s| (400..500).contains(&s)) => {
                if e.is_key_refused() {
                    return Err(e);
                }
                return Ok(VideoState::Failed {
                    code: e.code,
                    message: e.message,
                });
            }
            Err(e) => return Err(e),
        };
        Ok(match data["status"].as_str().unwrap_or_default() {
            "done" => finished(&data),
            "not_found" => VideoState::Failed {
                code: "NotFound".into(),
                message: "the visual API no longer has the task (it keeps them 12 h)".into(),
            },
            "expired" => VideoState::Cancelled,
            _ => VideoState::Working,
        })
    }
}

#[async_trait]
impl VideoProvider for JimengClient {
    #[tracing::instrument(skip_all, fields(model = %req.model()))]
    async fn submit(&self, req: &RemoteSubmit) -> Result<String, ProviderError> {
        let body = match req {
            RemoteSubmit::Images(r) => image_body(r)?,
            RemoteSubmit::Video(v) => video_body(v)?,
        };
        let data = self.call(SUBMIT, &body).await?;
        data["task_id"]
            .as_str()
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ProviderError::ours("BadResponse", "the submit answered without a task_id", true)
            })
    }

    async fn states(
        &self,
        tasks: &[RemoteTask],
    ) -> Result<HashMap<String, VideoState>, ProviderError> {
        let answers: Vec<(String, Result<VideoState, ProviderError>)> =
            futures::stream::iter(tasks.iter().cloned().map(|t| self.read(t)))
                .buffer_unordered(READS_AT_ONCE)
                .collect()
                .await;
        super::gather_states(
            answers
                .into_iter()
                .map(|(id, answer)| answer.map(|s| HashMap::from([(id, s)]))),
        )
    }

    /// The visual API cannot cancel a task: it runs to its end and its result is not fetched.
    async fn cancel(&self, _task: &RemoteTask) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn download(&self, url: &str) -> Result<(ByteStream, Option<u64>), ProviderError> {
        super::download_stream(&self.http, url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(model: &str, size: &str, images: Vec<String>) -> GenerateRequest {
        GenerateRequest {
            task_id: "t".into(),
            model: model.into(),
            prompt: "a cat".into(),
            size: size.into(),
            seed: Some(7),
            guidance_scale: None,
            watermark: false,
            images,
            max_images: 1,
        }
    }

    #[test]
    fn bodies_follow_the_req_keys_fields() {
        let b = image_body(&image("jimeng_t2i_v31", "1328x1328", vec![])).expect("body");
        assert_eq!(
            b,
            json!({"req_key": "jimeng_t2i_v31", "prompt": "a cat", "seed": 7,
                   "width": 1328, "height": 1328})
        );
        let b = image_body(&image(
            "jimeng_t2i_v40",
            "2K",
            vec!["https://a/b.png".into()],
        ))
        .expect("body");
        assert_eq!(
            (b["width"].clone(), b["force_single"].clone()),
            (json!(2048), json!(true))
        );
        assert_eq!(b["image_urls"], json!(["https://a/b.png"]));
        let b = image_body(&image(
            "jimeng_i2i_v30",
            "1024x1024",
            vec!["data:image/png;base64,iVBO".into()],
        ))
        .expect("body");
        assert_eq!(b["binary_data_base64"], json!(["iVBO"]));
        assert!(image_body(&image(
            "jimeng_i2i_v30",
            "1024x1024",
            vec![
                "data:image/png;base64,iVBO".into(),
                "https://a/b.png".into()
            ],
        ))
        .is_err());
        let v = VideoSubmit {
            task_id: "t".into(),
            model: "jimeng_t2v_v30".into(),
            prompt: "waves".into(),
            duration: 10,
            ratio: "9:16".into(),
            resolution: "720p".into(),
            seed: None,
            camera_fixed: false,
            watermark: false,
            frames: vec![],
            callback_url: None,
        };
        assert_eq!(
            video_body(&v).expect("body"),
            json!({"req_key": "jimeng_t2v_v30", "prompt": "waves", "frames": 241,
                   "aspect_ratio": "9:16"})
        );
    }

    #[test]
    fn results_and_refusals_are_read_as_the_visual_api_words_them() {
        let done = json!({"status": "done", "image_urls": ["https://x/1.jpeg"], "binary_data_base64": null});
        assert_eq!(
            finished(&done),
            VideoState::ImagesReady {
                images: vec![RemoteImage::Url("https://x/1.jpeg".into())]
            }
        );
        let inline = json!({"status": "done", "binary_data_base64": ["AAEC"]});
        assert_eq!(
            finished(&inline),
            VideoState::ImagesReady {
                images: vec![RemoteImage::Inline(vec![0u8, 1, 2].into())]
            }
        );
        let limit = json!({"code": 50430, "message": "Request Has Reached API Concurrent Limit, Please Try Later", "data": null});
        let e = business_error(429, &limit, None);
        // The wait without a Retry-After is the worker's (`worker::submit`), not made up here.
        assert!(e.is_pace_signal() && e.retry_after.is_none(), "{e:?}");
        let after = business_error(429, &limit, Some(Duration::from_secs(4)));
        assert_eq!(after.retry_after, Some(Duration::from_secs(4)));
        assert_eq!(e.code, "50430");
        let risk = business_error(
            400,
            &json!({"code": 50412, "message": "Text Risk Not Pass"}),
            None,
        );
        assert!(!risk.retryable);
        let sig = gateway_error(
            401,
            &json!({"RequestId": "r", "Error": {"Code": "SignatureDoesNotMatch", "Message": "m"}}),
            None,
        );
        assert!(sig.is_key_refused() && !sig.retryable);
        assert!(
            sig.message.contains("VOLCENGINE_SECRET_KEY"),
            "{}",
            sig.message
        );
    }
}
