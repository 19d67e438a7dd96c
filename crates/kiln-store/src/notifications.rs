//! Records of notifications: a user's inbox entries about builds, their mutes, and the
//! email outbox that delivers them.

use kiln_core::Millis;

/// What a notification is about. Each build gives a user at most one of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotificationKind {
    BuildStarted,
    BuildCompleted,
    BuildFailed,
    /// The reaper failed a silent build (`build_failed` with `data.reason = "stale"`).
    BuildStale,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 4] = [
        Self::BuildStarted,
        Self::BuildCompleted,
        Self::BuildFailed,
        Self::BuildStale,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BuildStarted => "build_started",
            Self::BuildCompleted => "build_completed",
            Self::BuildFailed => "build_failed",
            Self::BuildStale => "build_stale",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == value)
    }
}

impl std::fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One build event's notification, before it is given to its recipients.
#[derive(Clone, Debug, PartialEq)]
pub struct NewNotification {
    pub project_id: i64,
    pub build_id: i64,
    pub run_id: String,
    /// The global id of the event it reports.
    pub event_id: i64,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub created_at: Millis,
}

/// Whether recipients also get the notification by email (through the outbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Inbox,
    InboxAndEmail,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NotificationRecord {
    pub id: i64,
    pub user_id: i64,
    pub project_id: i64,
    pub project_slug: String,
    pub build_id: i64,
    pub run_id: String,
    pub event_id: i64,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub created_at: Millis,
    pub read_at: Option<Millis>,
    pub archived_at: Option<Millis>,
}

/// Which of a user's notifications to list, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct NotificationFilter {
    pub user_id: i64,
    /// `Some(true)`: only unread; `Some(false)`: only read; `None`: both.
    pub unread: Option<bool>,
    /// `Some(true)`: only archived; `Some(false)`: only the inbox; `None`: both.
    pub archived: Option<bool>,
    /// Only notifications with an id below this cursor (paging).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Unread notifications of a user's inbox (archived ones are not counted).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NotificationStats {
    pub unread: i64,
    /// Unread count per kind; kinds without unread notifications are absent.
    pub unread_by_kind: Vec<(NotificationKind, i64)>,
}

/// A user silences a project (`kind` None), a kind everywhere (`project_id` None), or a
/// kind in one project.
#[derive(Clone, Debug, PartialEq)]
pub struct NotificationMute {
    pub id: i64,
    pub user_id: i64,
    pub project_id: Option<i64>,
    pub project_slug: Option<String>,
    pub kind: Option<NotificationKind>,
    pub created_at: Millis,
}

/// One pending email of the outbox, claimed for an attempt.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEmail {
    pub id: i64,
    pub notification_id: i64,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    /// Attempts made so far, including the one this claim is for.
    pub attempts: i64,
}
