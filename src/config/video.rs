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
    /// Submit with a `callback_url` to this server when `PUBLIC_BASE_URL` is set.
    pub callbacks: bool,
    /// The fallback poll of a task whose provider calls back: every this long at most often
    /// (a lost callback costs at most this much delay).
    pub callback_poll: Duration,
    /// GET requests a second a worker process makes for the tasks callbacks announce (Ark
    /// allows 20 a second per account); more at once wait for the next list request.
    pub get_per_second: u32,
    /// Submits a minute of every video model, in place of the model table's (Ark's RPM of the
    /// default tier: 600 Pro, 300 Lite); 0 keeps the table's. The ceiling of each model's learned
    /// submit pace.
    pub submits_per_minute: u32,
}

impl Default for VideoConfig {
    fn default() -> Self {
        VideoConfig {
            poll_min: Duration::from_secs(2),
            poll_max: Duration::from_secs(30),
            list_interval: Duration::from_secs(1),
            list_batch: 100,
            callbacks: true,
            callback_poll: Duration::from_secs(30),
            get_per_second: 10,
            submits_per_minute: 0,
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
    let callbacks = env.parse(&["VIDEO_CALLBACKS"], d.callbacks, |_| Ok(()))?;
    let callback_poll = env
        .duration(&["VIDEO_CALLBACK_POLL"], d.callback_poll, ms(10))?
        .max(poll_min);
    let get_per_second = env.parse(&["VIDEO_GET_PER_SECOND"], d.get_per_second, |v: &u32| {
        if (1..=1000).contains(v) {
            Ok(())
        } else {
            Err("must be 1 to 1000".into())
        }
    })?;
    let submits_per_minute =
        env.parse(&["VIDEO_SUBMITS_PER_MINUTE"], d.submits_per_minute, |_| {
            Ok(())
        })?;
    Ok(VideoConfig {
        submits_per_minute,
        poll_min,
        poll_max,
        list_interval,
        list_batch,
        callbacks,
        callback_poll,
        get_per_second,
    })
}
