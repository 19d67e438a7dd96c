//! Roles of users in a project, and what each may do.

use std::fmt;

use crate::event::FieldError;

/// A user's role in one project. Each includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads builds, logs and artifacts.
    Viewer,
    /// Also triggers, cancels and retries builds.
    Developer,
    /// Also manages members, tokens, webhooks and settings.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Developer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Role, FieldError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!("unknown role '{raw}': use viewer, developer or admin"),
                )
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Viewer < Role::Developer && Role::Developer < Role::Admin);
        for role in Role::ALL {
            assert_eq!(Role::parse("role", role.as_str()).unwrap(), role);
        }
        assert!(
            Role::parse("role", "owner")
                .unwrap_err()
                .message
                .contains("viewer")
        );
    }
}
