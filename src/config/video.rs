//! `VIDEO_*`: how the worker tracks video tasks at the provider.

use std::time::Duration;

use super::{ms, ConfigError, Env};

#[derive(Debug, Clone, PartialEq)]
pub struct VideoConfig {
    /// Least time between two polls of one task.
    pub poll_min: Duration,
    /// Most time between two polls of one task (a task is polled at a tenth of its expected
    /// duration, between these two).
    pub poll_max: Duration,
    /// Least time between two list requests of one worker process: the provider allows one
    /// list request a second per account, and each covers up to `list_batch` tasks.
    pub list_interval: Duration,
    /// Tasks asked for in one list request (`filter.task_ids`), 1 to 500.
    pub list_batch: usize,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            poll_min: Duration::from_secs(2),
            poll_max: Duration::from_secs(30),
            list_interval: Duration::from_secs(1),
            list_batch: 100,
        }
    }
}

pub(super) fn read(env: &Env<'_>, d: VideoConfig) -> Result<VideoConfig, ConfigError> {
    let poll_min = env.duration(&["VIDEO_POLL_MIN"], d.poll_min, ms(10))?;
    let poll_max = env
        .duration(&["VIDEO_POLL_MAX"], d.poll_max, ms(10))?
        .max(poll_min);
    let list_interval = env.duration(&["VIDEO_LIST_INTERVAL"], d.list_interval, ms(10))?;
    let list_batch = env.parse(&["VIDEO_LIST_BATCH"], d.list_batch, |v: &usize| {
        if (1..=500).contains(v) {
            Ok(())
        } else {
            Err("must be 1 to 500".into())
        }
    })?;
    Ok(VideoConfig {
        poll_min,
        poll_max,
        list_interval,
        list_batch,
    })
}
