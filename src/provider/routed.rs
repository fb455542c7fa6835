//! The provider-side tasks of both families behind one `VideoProvider`: each call goes to Ark or
//! to the visual API by the model's family, so the tracker above knows one seam.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{ByteStream, ProviderError, RemoteSubmit, RemoteTask, VideoProvider, VideoState};
use crate::domain::ProviderFamily;

pub struct Routed {
    ark: Arc<dyn VideoProvider>,
    /// `None` when no visual API is configured (Ark keys without Jimeng keys).
    jimeng: Option<Arc<dyn VideoProvider>>,
}

impl Routed {
    pub fn new(ark: Arc<dyn VideoProvider>, jimeng: Option<Arc<dyn VideoProvider>>) -> Routed {
        Routed { ark, jimeng }
    }

    fn for_model(&self, model: &str) -> Result<&Arc<dyn VideoProvider>, ProviderError> {
        match ProviderFamily::of_model(model) {
            ProviderFamily::Ark => Ok(&self.ark),
            ProviderFamily::Jimeng => self.jimeng.as_ref().ok_or_else(|| {
                ProviderError::ours(
                    "JimengNotConfigured",
                    "Jimeng models need the visual API's keys: set VOLCENGINE_ACCESS_KEY and \
                     VOLCENGINE_SECRET_KEY",
                    false,
                )
            }),
        }
    }
}

#[async_trait]
impl VideoProvider for Routed {
    async fn submit(&self, req: &RemoteSubmit) -> Result<String, ProviderError> {
        self.for_model(req.model())?.submit(req).await
    }

    async fn states(
        &self,
        tasks: &[RemoteTask],
    ) -> Result<HashMap<String, VideoState>, ProviderError> {
        let (jimeng, ark): (Vec<RemoteTask>, Vec<RemoteTask>) = tasks
            .iter()
            .cloned()
            .partition(|t| ProviderFamily::of_model(&t.model) == ProviderFamily::Jimeng);
        let mut reads = Vec::new();
        for tasks in [ark, jimeng] {
            let Some(first) = tasks.first() else { continue };
            reads.push(match self.for_model(&first.model) {
                Ok(p) => p.states(&tasks).await,
                Err(e) => Err(e),
            });
        }
        super::gather_states(reads)
    }

    async fn state(&self, task: &RemoteTask) -> Result<VideoState, ProviderError> {
        self.for_model(&task.model)?.state(task).await
    }

    async fn cancel(&self, task: &RemoteTask) -> Result<(), ProviderError> {
        self.for_model(&task.model)?.cancel(task).await
    }

    async fn download(&self, url: &str) -> Result<(ByteStream, Option<u64>), ProviderError> {
        // A plain GET, the same for both families.
        self.ark.download(url).await
    }
}
