//! Notifications in SQL: inbox entries, mutes, the email outbox and the notifier's cursor.
//!
//! A notification is unique per (user, event) and per (user, build, kind), and inserts
//! use `ON CONFLICT DO NOTHING`: replaying events (after a crash, or by a second
//! replica's notifier) never notifies anyone twice.

use crate::NotificationStore;
use async_trait::async_trait;
use kiln_core::Millis;

use super::db::{self, Row};
use super::{SqlStore, trusted};
use crate::notifications::*;
use crate::{StoreError, StoreResult};

const NOTIFICATION_SELECT: &str = "SELECT n.id, n.user_id, n.project_id, p.slug AS project_slug, \
     n.build_id, n.run_id, n.event_id, n.kind, n.title, n.body, n.created_at, n.read_at, n.archived_at \
     FROM notifications n JOIN projects p ON p.id = n.project_id";
const MUTE_SELECT: &str = "SELECT m.id, m.user_id, m.project_id, p.slug AS project_slug, m.kind, m.created_at \
     FROM notification_mutes m LEFT JOIN projects p ON p.id = m.project_id";

fn kind_from_column(value: &str) -> StoreResult<NotificationKind> {
    NotificationKind::parse(value).ok_or_else(|| {
        StoreError::Unavailable(format!("corrupt notification row: unknown kind '{value}'"))
    })
}

fn notification_from_row(row: &Row) -> StoreResult<NotificationRecord> {
    Ok(NotificationRecord {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        project_id: row.try_get("project_id")?,
        project_slug: row.try_get("project_slug")?,
        build_id: row.try_get("build_id")?,
        run_id: row.try_get("run_id")?,
        event_id: row.try_get("event_id")?,
        kind: kind_from_column(&row.try_get::<String, _>("kind")?)?,
        title: row.try_get("title")?,
        body: row.try_get("body")?,
        created_at: Millis(row.try_get("created_at")?),
        read_at: row.try_get::<Option<i64>, _>("read_at")?.map(Millis),
        archived_at: row.try_get::<Option<i64>, _>("archived_at")?.map(Millis),
    })
}

fn mute_from_row(row: &Row) -> StoreResult<NotificationMute> {
    Ok(NotificationMute {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        project_id: row.try_get("project_id")?,
        project_slug: row.try_get("project_slug")?,
        kind: row
            .try_get::<Option<String>, _>("kind")?
            .as_deref()
            .map(kind_from_column)
            .transpose()?,
        created_at: Millis(row.try_get("created_at")?),
    })
}

/// A tri-state filter as one integer parameter: -1 any, 1 only when the condition
/// holds, 0 only when it does not (booleans do not bind alike on both engines).
fn tri_state(filter: Option<bool>) -> i64 {
    match filter {
        None => -1,
        Some(true) => 1,
        Some(false) => 0,
    }
}

#[async_trait]
impl NotificationStore for SqlStore {
    async fn insert_notifications(
        &self,
        notification: &NewNotification,
        recipients: &[i64],
        delivery: Delivery,
    ) -> StoreResult<Vec<i64>> {
        let mut inserted = Vec::new();
        if recipients.is_empty() {
            return Ok(inserted);
        }
        let mut transaction = self.pool.begin().await?;
        for &user_id in recipients {
            // The WHERE clause applies the user's mutes; on SQLite it also lets the
            // parser tell the upsert clause from a join constraint.
            let id: Option<i64> = db::query_scalar(
                "INSERT INTO notifications (user_id, project_id, build_id, run_id, event_id, kind, title, body, created_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE NOT EXISTS ( \
                   SELECT 1 FROM notification_mutes WHERE user_id = $1 \
                   AND (project_id IS NULL OR project_id = $2) AND (kind IS NULL OR kind = $6)) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(user_id)
            .bind(notification.project_id)
            .bind(notification.build_id)
            .bind(&notification.run_id)
            .bind(notification.event_id)
            .bind(notification.kind.as_str())
            .bind(&notification.title)
            .bind(&notification.body)
            .bind(notification.created_at.0)
            .fetch_optional(&mut *transaction)
            .await?;
            let Some(id) = id else { continue };
            if delivery == Delivery::InboxAndEmail {
                db::query(
                    "INSERT INTO notification_emails (notification_id, recipient, subject, body, attempts, next_attempt_at, created_at) \
                     SELECT n.id, u.email, n.title, n.body, 0, $2, $2 FROM notifications n \
                     JOIN users u ON u.id = n.user_id WHERE n.id = $1 \
                     ON CONFLICT DO NOTHING",
                )
                .bind(id)
                .bind(notification.created_at.0)
                .execute(&mut *transaction)
                .await?;
            }
            inserted.push(id);
        }
        transaction.commit().await?;
        Ok(inserted)
    }

    async fn list_notifications(
        &self,
        filter: &NotificationFilter,
    ) -> StoreResult<Vec<NotificationRecord>> {
        let rows = db::query(trusted(format!(
            "{NOTIFICATION_SELECT} WHERE n.user_id = $1 \
             AND ($2 < 0 OR ($2 = 1 AND n.read_at IS NULL) OR ($2 = 0 AND n.read_at IS NOT NULL)) \
             AND ($3 < 0 OR ($3 = 1 AND n.archived_at IS NOT NULL) OR ($3 = 0 AND n.archived_at IS NULL)) \
             AND n.id < $4 ORDER BY n.id DESC LIMIT $5"
        )))
        .bind(filter.user_id)
        .bind(tri_state(filter.unread))
        .bind(tri_state(filter.archived))
        .bind(filter.before.unwrap_or(i64::MAX))
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(notification_from_row).collect()
    }

    async fn mark_notification_read(
        &self,
        user_id: i64,
        id: i64,
        now: Millis,
    ) -> StoreResult<NotificationRecord> {
        db::query(
            "UPDATE notifications SET read_at = COALESCE(read_at, $1) WHERE id = $2 AND user_id = $3",
        )
        .bind(now.0)
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        self.notification_of_user(user_id, id).await
    }

    async fn mark_all_notifications_read(&self, user_id: i64, now: Millis) -> StoreResult<u64> {
        let done = db::query(
            "UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL AND archived_at IS NULL",
        )
        .bind(now.0)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn archive_notification(
        &self,
        user_id: i64,
        id: i64,
        now: Millis,
    ) -> StoreResult<NotificationRecord> {
        db::query(
            "UPDATE notifications SET archived_at = COALESCE(archived_at, $1) WHERE id = $2 AND user_id = $3",
        )
        .bind(now.0)
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        self.notification_of_user(user_id, id).await
    }

    async fn archive_notifications_before(&self, cutoff: Millis, now: Millis) -> StoreResult<u64> {
        let done = db::query(
            "UPDATE notifications SET archived_at = $1 WHERE archived_at IS NULL AND created_at < $2",
        )
        .bind(now.0)
        .bind(cutoff.0)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn notification_stats(&self, user_id: i64) -> StoreResult<NotificationStats> {
        let rows = db::query(
            "SELECT kind, COUNT(*) AS unread FROM notifications \
             WHERE user_id = $1 AND read_at IS NULL AND archived_at IS NULL GROUP BY kind ORDER BY kind",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let mut stats = NotificationStats::default();
        for row in &rows {
            let kind = kind_from_column(&row.try_get::<String, _>("kind")?)?;
            let unread: i64 = row.try_get("unread")?;
            stats.unread += unread;
            stats.unread_by_kind.push((kind, unread));
        }
        Ok(stats)
    }

    async fn add_notification_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
        now: Millis,
    ) -> StoreResult<NotificationMute> {
        if let Some(mute) = self.find_mute(user_id, project_id, kind).await? {
            return Ok(mute);
        }
        let inserted = db::query(
            "INSERT INTO notification_mutes (user_id, project_id, kind, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(project_id)
        .bind(kind.map(NotificationKind::as_str))
        .bind(now.0)
        .execute(&self.pool)
        .await;
        match inserted {
            // Added concurrently by another request: the mute exists, as asked.
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
        self.find_mute(user_id, project_id, kind)
            .await?
            .ok_or(StoreError::NotFound("mute"))
    }

    async fn remove_notification_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
    ) -> StoreResult<()> {
        let done = db::query(
            "DELETE FROM notification_mutes WHERE user_id = $1 AND COALESCE(project_id, 0) = $2 AND COALESCE(kind, '') = $3",
        )
        .bind(user_id)
        .bind(project_id.unwrap_or(0))
        .bind(kind.map(NotificationKind::as_str).unwrap_or(""))
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("mute"));
        }
        Ok(())
    }

    async fn notification_mutes(&self, user_id: i64) -> StoreResult<Vec<NotificationMute>> {
        let rows = db::query(trusted(format!(
            "{MUTE_SELECT} WHERE m.user_id = $1 ORDER BY m.id"
        )))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(mute_from_row).collect()
    }

    async fn notifier_cursor(&self) -> StoreResult<i64> {
        let value: Option<i64> =
            db::query_scalar("SELECT value FROM kiln_counters WHERE name = 'notifier_cursor'")
                .fetch_optional(&self.pool)
                .await?;
        value.ok_or(StoreError::NotFound("notifier cursor"))
    }

    async fn advance_notifier_cursor(&self, from: i64, to: i64) -> StoreResult<bool> {
        const ADVANCE: &str =
            "UPDATE kiln_counters SET value = $1 WHERE name = 'notifier_cursor' AND value = $2";
        if let Some(writer) = &self.writer {
            // On SQLite through the writer thread: it moves after every page of events,
            // so under ingest load it would otherwise wait (busy-sleeping) for the lock.
            return writer
                .run(move |connection| {
                    Ok(connection
                        .prepare_cached(ADVANCE)?
                        .execute(rusqlite::params![to, from])?
                        == 1)
                })
                .await;
        }
        let done = db::query(ADVANCE)
            .bind(to)
            .bind(from)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_due_emails(
        &self,
        now: Millis,
        claimed_until: Millis,
        limit: i64,
    ) -> StoreResult<Vec<OutboxEmail>> {
        // The conditions are repeated outside the subquery so that PostgreSQL re-checks
        // them on a row another replica claimed meanwhile: each attempt has one sender.
        let rows = db::query(
            "UPDATE notification_emails SET next_attempt_at = $1, attempts = attempts + 1 \
             WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $2 AND id IN ( \
               SELECT id FROM notification_emails WHERE sent_at IS NULL AND failed_at IS NULL \
               AND next_attempt_at <= $2 ORDER BY id LIMIT $3) \
             RETURNING id, notification_id, recipient, subject, body, attempts",
        )
        .bind(claimed_until.0)
        .bind(now.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut emails = rows
            .iter()
            .map(|row| {
                Ok(OutboxEmail {
                    id: row.try_get("id")?,
                    notification_id: row.try_get("notification_id")?,
                    recipient: row.try_get("recipient")?,
                    subject: row.try_get("subject")?,
                    body: row.try_get("body")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        emails.sort_by_key(|email| email.id);
        Ok(emails)
    }

    async fn email_sent(&self, id: i64, now: Millis) -> StoreResult<()> {
        db::query("UPDATE notification_emails SET sent_at = $1, last_error = NULL WHERE id = $2")
            .bind(now.0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn email_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<Millis>,
        now: Millis,
    ) -> StoreResult<()> {
        match retry_at {
            Some(retry_at) => {
                db::query(
                    "UPDATE notification_emails SET next_attempt_at = $1, last_error = $2 WHERE id = $3 AND sent_at IS NULL",
                )
                .bind(retry_at.0)
                .bind(error)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
            None => {
                db::query(
                    "UPDATE notification_emails SET failed_at = $1, last_error = $2 WHERE id = $3 AND sent_at IS NULL",
                )
                .bind(now.0)
                .bind(error)
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }
}

impl SqlStore {
    async fn notification_of_user(&self, user_id: i64, id: i64) -> StoreResult<NotificationRecord> {
        let row = db::query(trusted(format!(
            "{NOTIFICATION_SELECT} WHERE n.id = $1 AND n.user_id = $2"
        )))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(notification_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("notification"))
    }

    async fn find_mute(
        &self,
        user_id: i64,
        project_id: Option<i64>,
        kind: Option<NotificationKind>,
    ) -> StoreResult<Option<NotificationMute>> {
        let row = db::query(trusted(format!(
            "{MUTE_SELECT} WHERE m.user_id = $1 AND COALESCE(m.project_id, 0) = $2 AND COALESCE(m.kind, '') = $3"
        )))
        .bind(user_id)
        .bind(project_id.unwrap_or(0))
        .bind(kind.map(NotificationKind::as_str).unwrap_or(""))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(mute_from_row).transpose()
    }
}
