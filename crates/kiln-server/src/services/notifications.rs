//! Notifications as a service: a notification named by a path, and the answer for one
//! that is not the caller's.

use crate::service_error::ServiceError;

pub(crate) fn notification_id(raw: &str) -> Result<i64, ServiceError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ServiceError::bad_request("invalid_field", Some("id"), "id: must be a notification id")
    })
}

pub(crate) fn not_found(id: i64) -> impl FnOnce(kiln_store::StoreError) -> ServiceError {
    move |error| match error {
        kiln_store::StoreError::NotFound(_) => {
            ServiceError::NotFound(format!("notification {id} not found"))
        }
        other => other.into(),
    }
}
