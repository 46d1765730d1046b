//! Who owns xup's long-lived tasks: each is spawned into a [`Tasks`] group, and shutting xup down
//! stops the groups in order and waits for every task in them, so nothing is cut off half-way by
//! the runtime going away (mini-redis's "drop guard" idea, with tokio-util's `TaskTracker`).

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Tasks stopped together: each watches the group's token, and [`Tasks::stop`] waits for all.
#[derive(Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// The token the group's tasks watch; it is cancelled by [`Tasks::stop`].
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(task);
    }

    /// Cancel the group's token, and return once every task in the group has ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
